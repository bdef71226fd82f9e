"""What every layer uses: errors (:mod:`.errors`), atomic output (:mod:`.atomic`), the organs
and their class lists (:mod:`.organs`), progress and stop callables (:mod:`.progress`) and
compute devices (:mod:`.devices`). Imports nothing else of the library."""
