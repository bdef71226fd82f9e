"""The built-in demo: a cohort made from a real CT (:mod:`.cohort`) with planted findings
(:mod:`.planting`), deformations (:mod:`.deformation`) and matching reports (:mod:`.reports`), a
contact sheet (:mod:`.contact_sheet`), the real example data (:mod:`.reference_data`), and the
demo job itself (:mod:`.run`)."""
