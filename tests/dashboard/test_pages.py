"""The job form: every input is a job spec field, the recipe is there, and its defaults are the spec's."""

from __future__ import annotations

from html.parser import HTMLParser

from services.dashboard.pages import job_page, jobs_page
from shared.job_spec import JobSpec

RECIPE = {"weight_decay", "warmup_steps", "align_weight", "align_layers", "align_rows", "align_heads",
          "kl_direction", "kl_smoothing", "min_crop_mass"}


class FormControls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict] = {}
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None
        self._option: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in {"input", "select"} and "name" in attrs:
            self.controls[attrs["name"]] = attrs
            self._select = attrs["name"] if tag == "select" else None
            self.options.setdefault(attrs["name"], [])
        elif tag == "option" and self._select:
            self._option = attrs.get("value")
            if self._option is not None:
                self.options[self._select].append(self._option)

    def handle_data(self, data):
        if self._select and self._option is None and self.lasttag == "option" and data.strip():
            self.options[self._select].append(data.strip())

    def handle_endtag(self, tag):
        if tag == "option":
            self._option = None
        elif tag == "select":
            self._select = None


def _form() -> FormControls:
    parser = FormControls()
    parser.feed(jobs_page())
    return parser


def test_every_form_input_is_a_spec_field_and_the_recipe_is_offered():
    controls = _form().controls
    assert set(controls) <= set(JobSpec.model_fields)
    assert set(controls) >= RECIPE


def test_the_forms_defaults_are_the_specs_and_its_choices_are_valid():
    form = _form()
    defaults = JobSpec(dataset="x")
    for name in ("weight_decay", "align_weight", "kl_smoothing", "min_crop_mass"):
        assert float(form.controls[name]["value"]) == getattr(defaults, name), name
    for name in ("align_rows", "align_heads", "kl_direction"):
        assert form.options[name][0] == getattr(defaults, name)  # the first option is the default
        for choice in form.options[name]:
            smoothing = {"kl_smoothing": 0.1} if choice == "model-first" else {}
            assert getattr(JobSpec(dataset="x", **{name: choice}, **smoothing), name) == choice


def test_the_job_page_has_the_map_count_chart():
    assert 'id="map-counts"' in job_page("abc")


def test_the_init_field_offers_every_shipped_backbone_and_freeze_is_a_valid_choice():
    from shared.student_names import INIT_CHOICES

    page = jobs_page()
    for choice in INIT_CHOICES:
        assert f'<option value="{choice}">' in page and JobSpec(dataset="x", init=choice).init == choice
    form = _form()
    assert form.options["freeze"][0] == "true"  # the first option is the default
    assert [JobSpec(dataset="x", freeze=c).freeze for c in form.options["freeze"]] == [True, False]
