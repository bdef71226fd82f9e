"""The page of ``jmid review`` (trame + Vuetify 3): toolbar, side panel, slice views.

Element ids (``analyze``, ``scores``, ``overlay``, ``review-next``, ``mark-agree``...) are part
of the interface: the browser test and anyone scripting the page use them.
"""

from __future__ import annotations

from trame.widgets import client, html
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v

SCORE_HEADERS = ("organ", "class", "probability", "threshold", "flag")
VERDICT_LABELS = {
    "agree": "Agree (A)",
    "label_wrong": "Label wrong (L)",
    "model_wrong": "Model wrong (M)",
}

#: Form fields without padding or hint lines: the side panel is narrow.
COMPACT = {"density": "compact", "hide_details": True}

KEYS_SCRIPT = """
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey || t.closest("input, textarea, select")) return;
  const ids = {n: "review-next", p: "review-previous", a: "mark-agree",
               l: "mark-label_wrong", m: "mark-model_wrong"};
  const button = document.getElementById(ids[e.key.toLowerCase()]);
  if (button && !button.disabled) { e.preventDefault(); button.click(); }
});
"""


def build_ui(app):
    """Build the page of ``app`` (:class:`webreview.ReviewApp`); returns the layout."""
    with SinglePageWithDrawerLayout(app.server, full_height=True) as layout:
        layout.title.set_text("JMID Anomaly")
        layout.drawer.width = 500
        with layout.toolbar:
            v.VSpacer()
            if app.options.cases:
                v.VSelect(
                    v_model=("case_choice", None),
                    items=("cases",),
                    label="Case",
                    id="case-select",
                    **COMPACT,
                    style="max-width: 220px",
                    classes="mx-2",
                    update_modelValue=(app.guarded(app.open_case), "[$event]"),
                )
            html.Div("{{ case_name }}", id="case", classes="mx-2 text-subtitle-2")
            v.VBtn(
                "Analyze",
                id="analyze",
                click=app.guarded(app.analyze),
                color="primary",
                variant="flat",
                disabled=("running || !volume_loaded",),
            )
            v.VBtn("Cancel", id="cancel", click=app.cancel, disabled=("!running",), classes="mx-1")
            v.VProgressLinear(
                v_model=("progress",),
                active=("running",),
                absolute=True,
                location="bottom",
                color="primary",
            )
        with layout.drawer:
            _status(app)
            _scores(app)
            if app.review is not None:
                _review(app)
        with layout.content:
            app.layout.initialize_layout_grid(layout)
    return layout


def _alert(text: str, kind: str, element_id: str, classes: str) -> None:
    """A compact alert that shows state variable ``text`` while it is not empty."""
    v.VAlert(v_if=text, text=(text,), type=kind, density="compact", id=element_id, classes=classes)


def _status(app) -> None:
    with html.Div(classes="pa-3"):
        html.Div("{{ status }}", id="status", classes="text-body-2")
        _alert("error", "error", "error", "mt-2")
        with v.VExpansionPanels(classes="mt-2"), v.VExpansionPanel(title="Worker log"):
            with v.VExpansionPanelText():
                html.Pre(
                    "{{ log.join('\\n') }}",
                    id="log",
                    style="font-size: 11px; max-height: 200px; overflow: auto",
                )


def _scores(app) -> None:
    with v.VCard(classes="ma-2", variant="outlined"):
        v.VCardTitle("Scores", classes="text-subtitle-1")
        _alert("domain_note", "warning", "domain-note", "mx-2")
        with v.VTable(density="compact", id="scores", hover=True):
            with html.Thead(), html.Tr():
                for header in SCORE_HEADERS:
                    html.Th(header)
            with html.Tbody():
                with html.Tr(
                    v_for="(row, i) in scores",
                    key="i",
                    id=("`score-row-${i}`",),
                    click=(app.guarded(app.select_row), "[i]"),
                    style="cursor: pointer",
                    classes=("{'bg-primary': i === selected_row, 'font-weight-bold': row.flag}",),
                ):
                    for header in SCORE_HEADERS:
                        html.Td(f"{{{{ row['{header}'] }}}}")
        with v.VCardText():
            v.VSwitch(
                v_model=("overlay",),
                label="Heatmap overlay",
                id="overlay",
                **COMPACT,
                color="primary",
            )
            v.VSelect(
                v_model=("heatmap",),
                items=("heatmaps",),
                label="Heatmap of",
                **COMPACT,
                id="heatmap-select",
            )
            v.VSlider(
                v_model=("opacity",),
                min=0,
                max=1,
                step=0.05,
                label="Opacity",
                **COMPACT,
                id="opacity",
            )
            html.Div("{{ report }}", v_if="report", id="report", classes="mt-2 text-body-2")


def _review(app) -> None:
    with v.VCard(classes="ma-2", variant="outlined", id="review"):
        v.VCardTitle("Error analysis", classes="text-subtitle-1")
        with v.VCardText():
            _review_filters()
            step = app.guarded(app.review_step)
            with html.Div(classes="d-flex ga-2 mt-2"):
                v.VBtn("Previous (P)", id="review-previous", click=(step, "[-1]"))
                v.VBtn("Next (N)", id="review-next", click=(step, "[1]"))
            html.Div("{{ review_item.summary }}", id="review-item", classes="mt-2 text-body-2")
            html.Div(
                "{{ review_item.evidence }}", id="evidence", classes="mt-1 text-body-2 font-italic"
            )
            v.VTextField(
                v_model=("comment",),
                label="Comment",
                **COMPACT,
                id="comment",
                classes="mt-2",
            )
            with html.Div(classes="d-flex flex-wrap ga-2 mt-2"):
                for verdict, label in VERDICT_LABELS.items():
                    v.VBtn(
                        label,
                        id=f"mark-{verdict}",
                        size="small",
                        click=(app.guarded(app.mark), f"['{verdict}']"),
                        disabled=("!review_item.total",),
                    )
            html.Div("{{ marks }} marks saved", id="marks", classes="mt-2 text-caption")
    # Keys as in the Slicer module: N/P step, A/L/M mark (not while typing in a field).
    client.Script(KEYS_SCRIPT)


def _review_filters() -> None:
    """Which mistakes to step through: outcome, organ, class, threshold."""
    v.VSelect(
        v_model=("review_outcome",),
        items=("review_outcomes",),
        label="Show",
        **COMPACT,
        id="review-outcome",
    )
    with html.Div(classes="d-flex ga-2 mt-2"):
        v.VSelect(
            v_model=("review_organ",),
            items=("review_organs",),
            label="Organ",
            **COMPACT,
            id="review-organ",
        )
        v.VSelect(
            v_model=("review_class",),
            items=("review_classes",),
            label="Class",
            **COMPACT,
            id="review-class",
        )
    v.VSlider(
        v_model=("review_threshold",),
        min=0,
        max=1,
        step=0.01,
        label="Threshold (0: bundle's)",
        **COMPACT,
        thumb_label=True,
        id="review-threshold",
    )
