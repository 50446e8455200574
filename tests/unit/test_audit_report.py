"""The run report and the Audits page: every class beside the mean and the worst class, the Wilson band, the degenerate flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.report import FIGURE, PAGE, draw_accuracy, points_table, write_report
from audit.results import wilson_interval
from audit.store import AuditStore
from tests.audit_runs import CARD, EIGHT, make_result, one_class_result


@pytest.fixture
def store(tmp_path):
    """A one-class baseline (run 1) and a trained attentive model on the same audit set (run 2)."""
    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    for result in (
        one_class_result(model="demo-resnet50-baseline", attention=False),
        make_result(audit_set=EIGHT, robust=(0.75, 0.5, 0.25)),
    ):
        card = {**CARD, "attention": result.attention}
        run_id = store.start_run(model=result.model, version=1, card=card, backend="embedded", attack="linf_pgd", config={"steps": 20})
        store.finish_run(run_id, result)
    yield store
    store.close()


def test_the_figure_shows_every_class_the_worst_class_and_the_wilson_band(store):
    one_class, trained = store.get_run(1), store.get_run(2)
    figure = draw_accuracy([trained, one_class])
    summary, trained_panel, one_class_panel = figure.axes
    labels = {ax: [line.get_label() for line in ax.get_lines()] for ax in figure.axes}
    for panel in (trained_panel, one_class_panel):
        assert {"mean", "worst class", "class a"} <= set(labels[panel])
        assert panel.collections, "no Wilson band"  # fill_between
    assert {"class b", "class c"} <= set(labels[one_class_panel])
    lines = {line.get_label(): line for line in one_class_panel.get_lines()}
    assert list(lines["class a"].get_ydata()) == [1.0, 1.0] and list(lines["class b"].get_ydata()) == [0.0, 0.0]
    assert list(lines["worst class"].get_ydata()) == [0.0, 0.0]
    band = one_class_panel.collections[0].get_paths()[0].vertices[:, 1]
    lower, upper = wilson_interval(4, 8)
    assert band.min() == pytest.approx(lower) and band.max() == pytest.approx(upper)
    assert "DEGENERATE" in one_class_panel.get_title() and "DEGENERATE" not in trained_panel.get_title()
    assert any(label.startswith("worst class: ") for label in labels[summary])


def _cell(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def test_the_table_puts_an_interval_beside_every_figure(store):
    header, rows = points_table(store.get_run(1))
    assert header == ["epsilon", "in 1/255", "robust accuracy [95%]", "worst class [95%]", "balanced [95%]", "class a [95%]",
                      "class b [95%]", "class c [95%]", "attacked", "fooled", "uniform noise"]
    balanced = one_class_result().points[1].balanced_interval
    assert balanced == (pytest.approx(1 / 3), pytest.approx(1 / 3))  # every class all right or all wrong: nothing to resample
    assert rows[1] == [
        "0.01", "2.55/255", _cell(0.5, wilson_interval(4, 8)), _cell(0.0, wilson_interval(0, 2)) + " (b)",
        _cell(1 / 3, balanced), _cell(1.0, wilson_interval(4, 4)), _cell(0.0, wilson_interval(0, 2)),
        _cell(0.0, wilson_interval(0, 2)), "4", "0", "0.500",
    ]
    # A run stored before intervals on every figure shows its figures alone where it has no interval.
    old = make_result(robust=(0.9, 0.3, 0.1))
    assert not old.points[1].class_counts
    run_id = store.start_run(model="demo-resnet50-attention", version=2, card=CARD, backend="embedded", attack="linf_pgd", config={})
    store.finish_run(run_id, old)
    assert points_table(store.get_run(run_id))[1][1][2:6] == [_cell(0.3, wilson_interval(1, 4)), "0.300", "0.300", "0.300"]


def test_the_report_of_a_one_class_model_says_it_is_degenerate(store, tmp_path):
    page = write_report(store, 1, artefacts_root=tmp_path / "artefacts")
    assert page.name == PAGE and (page.parent / FIGURE).read_bytes().startswith(b"\x89PNG")
    text = page.read_text()
    assert "Degenerate model: it answers class a for 100% of the audit set&#x27;s images, each true class weighted equally" in text
    assert "<th>worst class [95%]</th>" in text and "<th>class c [95%]</th>" in text and "95% Wilson score interval" in text
    assert "stratified by class, 2000 resamples, seed 0" in text
    clean, balanced = wilson_interval(4, 8), one_class_result().balanced_clean_interval
    assert f"clean accuracy {_cell(0.5, clean)} (balanced {_cell(1 / 3, balanced)})" in text
    assert "Attack seed 7; apgd-ce fooled 0, square fooled 0." in text
    assert "Compared with attention (demo-resnet50-attention v1), run 2." in text
    assert "Chance level is 1/3 = 0.333." in text and "0.01 is 2.55/255 grey levels" in text
    assert "<td>2.55/255</td>" in text and "td { white-space: nowrap; }" in text
    assert "Degenerate model" not in write_report(store, 2, artefacts_root=tmp_path / "artefacts").read_text()


def test_the_audits_page_shows_the_same(store, tmp_path):
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    repo = tmp_path / "repo"
    repo.mkdir()
    predictor = EmbeddedPredictor(repo)
    app = create_app(ServiceConfig(model_repo=repo), predictor=predictor,
                     extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))])
    client = app.test_client()
    text = client.get("/audits?run=1").get_data(as_text=True)
    assert "Degenerate model: it answers class a for 100%" in text
    for cell in ("<th>robust accuracy [95%]</th>", "<th>worst class [95%]</th>", "<th>class b [95%]</th>", "Counted over 8 images",
                 f"<td>{_cell(0.0, wilson_interval(0, 2))} (b)</td>", "2000 resamples, seed 0",
                 f"Clean accuracy {_cell(0.5, wilson_interval(4, 8))} (balanced"):
        assert cell in text
    assert '<strong class="problem">degenerate</strong>' in text  # in the list of runs
    assert "Degenerate model" not in client.get("/audits?run=2").get_data(as_text=True)
    with client.get("/audits/1/accuracy.png") as missing:
        assert missing.status_code == 404  # never drawn on a request: the worker draws it when the run ends
    write_report(store, 1, artefacts_root=tmp_path / "artefacts")
    with client.get("/audits/1/accuracy.png") as picture:
        assert picture.status_code == 200 and picture.data.startswith(b"\x89PNG")
    doc = client.get("/api/v1/audits/1").get_json()
    assert doc["degenerate"] is True and doc["points"][1]["worst_class_robust_accuracy"] == 0.0
    assert doc["points"][1]["robust_accuracy_lower"] == pytest.approx(wilson_interval(4, 8)[0])
    predictor.close()
    assert Path(tmp_path / "artefacts" / "1" / "report" / FIGURE).is_file()


def test_the_figure_draws_chance_and_epsilons_in_grey_levels(store):
    figure = draw_accuracy([store.get_run(2), store.get_run(1)], class_names=("a", "b", "c"))
    for ax in figure.axes:
        chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
        assert len(chance) == 1 and chance[0].get_label() == "chance (1/3 = 0.33)"
        assert list(chance[0].get_ydata()) == pytest.approx([1 / 3, 1 / 3])
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["0.01\n2.55/255", "0.02\n5.1/255"]


@pytest.mark.parametrize("runs", [(2,), (2, 1)], ids=["one run", "with its partner"])
def test_the_figures_legends_read_at_least_11_px_where_the_page_shows_them(store, tmp_path, runs):
    """The Audits page shows the PNG at its own width (1000 px) on a 1280 px screen: a legend's
    point size at the figure's dpi is then its size on screen."""
    from PIL import Image

    from audit.report import accuracy_figure

    path = accuracy_figure([store.get_run(i) for i in runs], tmp_path / FIGURE, ("a", "b", "c"))
    with Image.open(path) as picture:
        assert picture.size[0] == 1000
    figure = draw_accuracy([store.get_run(i) for i in runs], ("a", "b", "c"))
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None] + figure.legends
    texts = [text for legend in legends for text in legend.get_texts()]
    assert {"mean", "worst class", "class a", "chance (1/3 = 0.33)"} <= {t.get_text() for t in texts}
    for text in texts:
        assert text.get_fontsize() * figure.dpi / 72 >= 11, text.get_text()


def test_the_examples_figure_has_the_grad_cam_colour_scale_and_fits_1000_px(tmp_path):
    import numpy as np
    from PIL import Image

    from audit.report import examples_figure

    rng = np.random.default_rng(0)
    examples = {
        "index": np.arange(2), "clean": rng.random((2, 16, 16, 3)), "adversarial": rng.random((2, 16, 16, 3)),
        "clean_class": np.array([0, 1]), "adversarial_class": np.array([1, 2]), "epsilon": np.array(["0.01", "0.02"]),
        "clean_heatmap": rng.random((2, 16, 16)), "adversarial_heatmap": rng.random((2, 16, 16)),
    }
    path = examples_figure(examples, ["synthetic lesion: ring", "synthetic lesion: spot", "synthetic lesion: streak"],
                           tmp_path / "examples.png")
    with Image.open(path) as picture:
        assert picture.size[0] == 1000


def test_a_reduced_budget_is_named_on_the_report_the_audits_page_and_the_api(tmp_path):
    """A run below the standard budget says so beside its figures and is never called standard; a standard one is."""
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    store = AuditStore(f"sqlite:///{tmp_path / 'b.sqlite'}")
    for config in ({"steps": 25, "queries": 300}, {"steps": 100, "queries": 5000}):
        result = make_result(audit_set=EIGHT)
        run_id = store.start_run(model=result.model, version=1, card=CARD, backend="embedded", attack="ensemble",
                                 config=config)
        store.finish_run(run_id, result)
    reduced = "reduced (25 iterations, 300 queries)"
    page = write_report(store, 1, artefacts_root=tmp_path / "artefacts").read_text()
    assert f'<strong id="budget">budget: {reduced}</strong>' in page and f"at the {reduced} budget" in page
    assert "standard" not in page
    assert 'budget: standard</strong>' in write_report(store, 2, artefacts_root=tmp_path / "artefacts").read_text()
    repo = tmp_path / "repo"
    repo.mkdir()
    predictor = EmbeddedPredictor(repo)
    app = create_app(ServiceConfig(model_repo=repo), predictor=predictor,
                     extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))])
    client = app.test_client()
    text = client.get("/audits?run=1").get_data(as_text=True)
    assert f'<span id="budget" class="problem">budget: {reduced}</span>' in text
    assert f"<td>{reduced}</td>" in text and "<td>standard</td>" in text  # the list of runs names each run's
    assert client.get("/api/v1/audits/1").get_json()["budget_label"] == reduced
    assert client.get("/api/v1/audits/2").get_json()["budget_label"] == "standard"
    predictor.close()
    store.close()
