"""`histo slide-eval`: Camelyon16's slide-level AUC and lesion-level FROC, checked by hand on tiny cases and end
to end on synthetic slides of real labelled patches; and the GeoJSON `histo slide` writes, checked against
the rules QuPath reads it by."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import shapely

import serve_runs
from conftest import HISTO
from spotter import mosaic
from spotter.cli import main
from spotter.errors import BadInput
from spotter.histo import annotations, slide_eval, slide_outputs
from spotter.histo.slide_eval import EvalSettings


def write_output(folder, tiles, mpp=1.0, file_name=None, size=(5000, 5000)):
    """A `histo slide` output as slide-eval reads it: slide.json and tiles.csv (WSInfer's schema)."""
    folder.mkdir(parents=True)
    rows = [{"minx": x, "miny": y, "width": w, "height": h, "prob_tumor": p} for x, y, w, h, p in tiles]
    pd.DataFrame(rows, columns=["minx", "miny", "width", "height", "prob_tumor"]).to_csv(folder / "tiles.csv",
                                                                                        index=False)
    summary = {"file": f"/slides/{file_name or folder.name + '.tif'}", "mpp": mpp, "level0_size": list(size)}
    (folder / "slide.json").write_text(json.dumps(summary))
    return folder


def qupath_feature(geometry, name="Tumor", object_type="annotation"):
    """A feature as QuPath 0.4+ exports it (File > Export objects as GeoJSON)."""
    properties = {"objectType": object_type}
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "id": "5f5c6c5e-3b5e-4a3c-9c1e-2f7f1d2a9b10", "geometry": geometry,
            "properties": properties}


def box(x0, y0, x1, y1):
    return shapely.geometry.mapping(shapely.box(x0, y0, x1, y1))


def tile(x, y, p, side=100):
    return (x, y, side, side, p)


# ---------------------------------------------------------------- by hand

@pytest.fixture
def tiny(tmp_path):
    """Four slides at 1 µm/px (so µm = pixels), tiles of 100 px, no growing, no ITC, NMS radius 150 µm.

    t1 (tumour): lesions L1 = [0,200)^2 and L2 = [1000,1200)^2.
        tile (0,0) p 0.9, centre (50,50) in L1: TP for L1, 0.9
        tile (100,0) p 0.8, centre (150,50): 100 px from (50,50) <= 150, suppressed by it
        tile (500,500) p 0.7, centre (550,550): in no lesion: FP 0.7
        tile (1100,1100) p 0.3, centre (1150,1150) in L2: TP for L2, 0.3
        tile (2000,0) p 0.02: under min_prob 0.05, never a detection
    t2 (tumour): lesion L3 = [0,300)^2, missed: its tiles are at p 0.04 (< min_prob); tile (1000,0) p 0.6: FP
    n1 (normal, no annotation file): tiles (0,0) p 0.5 and (400,0) p 0.2, 400 px apart: two FPs
    n2 (normal): tile (0,0) p 0.65: FP

    Slide scores (max tile): t1 0.9, t2 0.6, n1 0.5, n2 0.65. AUC: of the 4 (tumour, normal) pairs,
    0.9 > 0.5, 0.9 > 0.65, 0.6 > 0.5 win and 0.6 < 0.65 loses: 3/4 = 0.75.

    FROC: 3 lesions, 4 slides; TP confidences 0.9, 0.3 (L3 missed); FP 0.7, 0.6, 0.5, 0.2, 0.65.
        threshold 0.9: 1 lesion, 0 FP -> sensitivity 1/3 at 0 FPs/slide
        0.7: 1 FP -> 1/4;  0.65: 2 -> 1/2;  0.6: 3 -> 3/4;  0.5: 4 -> 1   (sensitivity 1/3 throughout)
        0.3: L2 found: 2/3 at 1 FP/slide;  0.2: 5 FPs -> 2/3 at 5/4
    Sensitivity at 1/4: 1/3; at 1/2: 1/3; at 1, 2, 4, 8: 2/3. Average: (1/3 + 1/3 + 4 * 2/3) / 6 = 5/9.
    """
    outputs, notes = tmp_path / "outputs", tmp_path / "annotations"
    notes.mkdir()
    write_output(outputs / "t1", [tile(0, 0, 0.9), tile(100, 0, 0.8), tile(500, 500, 0.7), tile(1100, 1100, 0.3),
                                  tile(2000, 0, 0.02)])
    write_output(outputs / "t2", [tile(0, 0, 0.04), tile(100, 100, 0.04), tile(1000, 0, 0.6)])
    write_output(outputs / "n1", [tile(0, 0, 0.5), tile(400, 0, 0.2)])
    write_output(outputs / "n2", [tile(0, 0, 0.65)])
    # t1 as a FeatureCollection with a MultiPolygon; t2 as a single Feature (QuPath exports both ways)
    l1, l2 = shapely.box(0, 0, 200, 200), shapely.box(1000, 1000, 1200, 1200)
    multi = shapely.geometry.mapping(shapely.MultiPolygon([l1, l2]))
    (notes / "t1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [qupath_feature(multi)]}))
    (notes / "t2.geojson").write_text(json.dumps(qupath_feature(box(0, 0, 300, 300))))
    return outputs, notes


HAND = EvalSettings(dilate_um=0, itc_um=0, nms_radius_um=150, min_prob=0.05, bootstrap=200)


def test_hand_computed_auc_and_froc(tiny, tmp_path):
    outputs, notes = tiny
    (notes / "t3.geojson").write_text(json.dumps(qupath_feature(box(0, 0, 10, 10))))  # no output of t3
    said = []
    report = slide_eval.evaluate([outputs], notes, tmp_path / "eval", HAND, log=said.append)
    assert report["unused_annotations"] == ["t3.geojson"] and any("t3.geojson" in line for line in said)
    assert (report["slides"], report["tumour_slides"], report["normal_slides"]) == (4, 2, 2)
    assert report["slide_auc"] == pytest.approx(0.75)
    low, high = report["slide_auc_ci95"]
    assert 0 <= low <= 0.75 <= high <= 1
    assert (report["lesions"], report["lesions_detected"], report["false_positives"]) == (3, 2, 5)
    at = report["froc"]["sensitivity_at_fps"]
    assert [at[k] for k in ("0.25", "0.5", "1", "2", "4", "8")] == pytest.approx([1 / 3, 1 / 3] + [2 / 3] * 4)
    assert report["froc"]["average_sensitivity"] == pytest.approx(5 / 9)
    assert [point["threshold"] for point in report["froc"]["curve"]] == [None, 0.9, 0.7, 0.65, 0.6, 0.5, 0.3, 0.2]
    curve = pd.DataFrame(report["froc"]["curve"])
    assert curve["fps_per_slide"].tolist() == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1, 1, 1.25])
    assert curve["sensitivity"].tolist() == pytest.approx([0] + [1 / 3] * 5 + [2 / 3] * 2)

    table = pd.read_csv(tmp_path / "eval" / "slides.csv").set_index("slide")
    assert table.loc["t1", ["tumour", "lesions", "lesions_detected", "detections", "false_positives"]].tolist() == \
        [1, 2, 2, 3, 1]
    assert table.loc["t2", ["lesions", "lesions_detected", "false_positives"]].tolist() == [1, 0, 1]
    assert table.loc["n1", ["tumour", "score", "false_positives"]].tolist() == [0, 0.5, 2]
    assert table.loc["t1", "annotated_mm2"] == pytest.approx(2 * 200 * 200 / 1e6)
    found = pd.read_csv(tmp_path / "eval" / "detections.csv")
    assert found[found["slide"] == "t1"][["x", "y", "prob", "outcome"]].values.tolist() == \
        [[50, 50, 0.9, "TP"], [550, 550, 0.7, "FP"], [1150, 1150, 0.3, "TP"]]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["slide_auc"] == pytest.approx(0.75)
    for name in ("froc.png", "roc.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 10_000


def test_growing_joins_near_annotations_and_isolated_tumour_cells_are_ignored(tmp_path):
    """At 0.5 µm/px: squares A = [0,200)x[0,200) and B = [400,600)x[0,200) px (100 µm, 100 µm apart) and a
    small square C = [2000,2100)^2 px (50 µm: diagonal 71 µm).
    Grown by 75 µm (150 px) A and B touch (gap 200 px < 300): one lesion, annotated tumour from (0,0) to
    (600,200): longest diameter sqrt(600² + 200²) px = 316 µm >= 200, counted. C: 71 µm < 200: ITC.
    Detections (tiles of 20 px, far apart): (290,90)-(310,110), centre (300,100) in the gap: TP (p 0.9);
    centre (740,100), 140 px right of B, inside the grown lesion: TP again (p 0.8), neither TP nor FP;
    centre (2050,2050) in C: ITC (p 0.7), ignored; centre (4000,4000): FP (p 0.6).
    So 1 lesion, found; 1 FP on 1 slide; sensitivity 1 at every rate >= 1 FP/slide and at 1/4 and 1/2
    (threshold 0.9 reaches it with 0 FPs). Not grown (dilate 0): A and B are two lesions and the gap's
    detection is an FP; B's neighbour (740,100) is outside B: FP too."""
    out = write_output(tmp_path / "outputs" / "s", [(290, 90, 20, 20, 0.9), (730, 90, 20, 20, 0.8),
                                                    (2040, 2040, 20, 20, 0.7), (3990, 3990, 20, 20, 0.6)], mpp=0.5)
    notes = tmp_path / "notes"
    notes.mkdir()
    features = [qupath_feature(box(0, 0, 200, 200)), qupath_feature(box(400, 0, 600, 200)),
                qupath_feature(box(2000, 2000, 2100, 2100))]
    (notes / "s.geojson").write_text(json.dumps(features))  # QuPath 0.2 exported a bare list of features
    settings = EvalSettings(nms_radius_um=10, bootstrap=10)
    report = slide_eval.evaluate([out], notes, tmp_path / "eval", settings, log=lambda *_: None)
    assert (report["lesions"], report["itc_lesions"], report["lesions_detected"], report["false_positives"]) == \
        (1, 1, 1, 1)
    assert report["froc"]["average_sensitivity"] == pytest.approx(1.0)
    outcomes = pd.read_csv(tmp_path / "eval" / "detections.csv")["outcome"].tolist()
    assert outcomes == ["TP", "TP again", "ITC", "FP"]
    assert report["slide_auc"] is None  # one class only: undefined, and said so

    flat = EvalSettings(dilate_um=0, itc_um=0, nms_radius_um=10, bootstrap=10)
    report = slide_eval.evaluate([out], notes, tmp_path / "eval0", flat, log=lambda *_: None)
    assert (report["lesions"], report["lesions_detected"], report["false_positives"]) == (3, 1, 3)
    outcomes = pd.read_csv(tmp_path / "eval0" / "detections.csv")["outcome"].tolist()
    assert outcomes == ["FP", "FP", "TP", "FP"]


def test_annotations_as_qupath_and_camelyon16_export_them(tmp_path):
    square = box(0, 0, 100, 100)
    cases = {
        # QuPath 0.4+: FeatureCollection; a Stroma annotation and Spotter's own Tumor tiles/detections are not tumour
        "a.geojson": {"type": "FeatureCollection", "features": [
            qupath_feature(square), qupath_feature(box(500, 0, 600, 100), name="Stroma"),
            qupath_feature(box(900, 0, 1000, 100), object_type="tile"),
            qupath_feature(box(900, 0, 1000, 100), object_type="detection")]},
        # a derived class, an unclassified annotation and QuPath 0.3's object_type
        "b.geojson": [qupath_feature(square, name=None),
                      {"type": "Feature", "geometry": box(200, 0, 300, 100),
                       "properties": {"object_type": "annotation",
                                      "classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}}}],
        # a bare geometry (no properties): an annotation to QuPath
        "c.json": square,
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
    a = annotations.read(tmp_path / "a.geojson")
    assert a.tumour.area == 100 * 100 and a.annotations == 2 and a.classes == {"Tumor": 1, "Stroma": 1}
    assert annotations.read(tmp_path / "b.geojson").tumour.area == 2 * 100 * 100
    assert annotations.read(tmp_path / "c.json").tumour.area == 100 * 100
    (tmp_path / "d.geojson").write_text(json.dumps(qupath_feature(square, name="Stroma")))
    with pytest.raises(BadInput, match="none of a tumour class.*Stroma: 1.*--classes"):
        annotations.read(tmp_path / "d.geojson")
    assert annotations.read(tmp_path / "d.geojson", classes=("Stroma",)).tumour.area == 100 * 100

    # Camelyon16 (ASAP) XML: group _0 tumour, _2 a normal hole cut out of it; a decimal comma read too
    (tmp_path / "tumor_001.xml").write_text("""<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
 <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>
  <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="1000" Y="0" />
  <Coordinate Order="2" X="1000" Y="1000,0" /><Coordinate Order="3" X="0" Y="1000" /></Coordinates></Annotation>
 <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E"><Coordinates>
  <Coordinate Order="0" X="100" Y="100" /><Coordinate Order="1" X="300" Y="100" />
  <Coordinate Order="2" X="300" Y="300" /><Coordinate Order="3" X="100" Y="300" /></Coordinates></Annotation>
</Annotations><AnnotationGroups /></ASAP_Annotations>""")
    xml = annotations.read(tmp_path / "tumor_001.xml")
    assert xml.tumour.area == 1000 * 1000 - 200 * 200
    assert annotations.find(tmp_path, ["nothing", "tumor_001"]) == tmp_path / "tumor_001.xml"
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(BadInput, match="broken.geojson"):
        annotations.read(tmp_path / "broken.geojson")


def test_slide_eval_cli_names_mistakes(tiny, tmp_path, capsys):
    outputs, notes = tiny
    (outputs / "half").mkdir()
    (outputs / "half" / "tiles.csv").write_text("minx,miny,width,height,prob_tumor\n")
    assert main(["histo", "slide-eval", outputs / "half", "--annotations", notes, "--out", tmp_path / "e"]) == 2
    assert "no slide.json" in capsys.readouterr().err
    (notes / "t1.geojson").write_text(json.dumps(qupath_feature(box(90_000, 90_000, 91_000, 91_000))))
    assert main(["histo", "slide-eval", outputs / "t1", "--annotations", notes, "--out", tmp_path / "e"]) == 2
    assert "outside the 5000x5000 slide" in capsys.readouterr().err
    assert main(["histo", "slide-eval", outputs / "n1", "--annotations", notes, "--out", tmp_path / "e",
                 "--min-prob", "0"]) == 2
    assert "--min-prob" in capsys.readouterr().err


# ---------------------------------------------------------------- QuPath's reading rules

def check_qupath_geojson(document: dict, object_type: str) -> list[dict]:
    """The rules QuPath 0.4-0.7 reads a GeoJSON file by (qupath/qupath, qupath-core/src/main/java/qupath/lib/io:
    GsonTools.parseObjectsFromGeoJSON, QuPathTypeAdapters.PathObjectTypeAdapter and MeasurementListTypeAdapter,
    GsonTools.PathClassTypeAdapter, ROITypeAdapters), checked strictly; returns the features."""
    assert document["type"] == "FeatureCollection" and isinstance(document["features"], list)
    for feature in document["features"]:
        assert feature["type"] == "Feature"
        geometry = shapely.geometry.shape(feature["geometry"])  # Polygon coordinates: [ring, hole...] of [x, y]
        assert geometry.geom_type in ("Polygon", "MultiPolygon") and geometry.is_valid and not geometry.is_empty
        properties = feature["properties"]
        assert properties["objectType"] == object_type  # QuPath's MAP_TYPES: annotation, detection, tile, cell
        if "classification" in properties:  # the proxy form needs both a name and a colour, else it throws
            classification = properties["classification"]
            assert isinstance(classification["name"], str) and classification["name"]
            color = classification["color"]
            assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        if "measurements" in properties:  # 0.4+: an object of name -> number (a list of {name, value} before)
            assert isinstance(properties["measurements"], dict) and properties["measurements"]
            for key, value in properties["measurements"].items():
                assert isinstance(key, str) and isinstance(value, (int, float)) and not isinstance(value, bool)
                assert math.isfinite(value)
        if "isLocked" in properties:
            assert isinstance(properties["isLocked"], bool)
        if "name" in properties:
            assert isinstance(properties["name"], str)
    return document["features"]


def test_slide_geojson_follows_qupaths_import_format(tmp_path):
    """tiles.geojson and regions.geojson, as `histo slide` writes them, on a grid with an L-shaped hot region
    and a ring (a hole): QuPath tile objects with a prob_tumor measurement, and Tumor annotations (QuPath's
    own class name and colour, 200,0,0) with area and probability measurements; level-0 pixel coordinates."""
    heat = np.full((8, 8), 0.1, np.float16)
    heat[0, 0] = np.nan  # off tissue: no tile
    heat[1:3, 1] = heat[2, 2] = 0.9  # an L
    heat[4:7, 4:7] = 0.8
    heat[5, 5] = 0.2  # a ring with a hole
    xs = ys = np.round(np.arange(9) * 61.7).astype(np.int64)  # cells of 61.7 level-0 pixels, edges rounded
    tiles = slide_outputs.tile_table(heat, xs, ys)
    tile_features = check_qupath_geojson(json.loads(json.dumps(slide_outputs.tiles_geojson(tiles))), "tile")
    assert len(tile_features) == 63
    first = tile_features[0]
    assert shapely.geometry.shape(first["geometry"]).bounds == (xs[1], 0, xs[2], ys[1])
    assert first["properties"]["measurements"] == {"prob_tumor": pytest.approx(0.1, abs=1e-3)}
    regions = check_qupath_geojson(json.loads(json.dumps(slide_outputs.regions_geojson(heat, xs, ys, 0.5, 0.5))),
                                   "annotation")
    assert [r["properties"]["classification"] for r in regions] == [{"name": "Tumor", "color": [200, 0, 0]}] * 2
    ring, ell = (shapely.geometry.shape(r["geometry"]) for r in regions)  # sorted by area, largest first
    assert ring.area == (xs[7] - xs[4]) * (ys[7] - ys[4]) - (xs[6] - xs[5]) * (ys[6] - ys[5])
    assert len(ring.interiors) == 1
    assert ell.equals(shapely.union_all([shapely.box(xs[1], ys[1], xs[2], ys[3]), shapely.box(xs[2], ys[2], xs[3],
                                                                                              ys[3])]))
    assert regions[0]["properties"]["name"] == "Tumour region 1"
    assert set(regions[0]["properties"]["measurements"]) == {"area_mm2", "max_prob_tumor", "mean_prob_tumor"}
    # and slide-eval reads regions.geojson back as QuPath would export it: the same tumour area
    (tmp_path / "regions.geojson").write_text(json.dumps(slide_outputs.regions_geojson(heat, xs, ys, 0.5, 0.5)))
    assert annotations.read(tmp_path / "regions.geojson").tumour.area == pytest.approx(ring.area + ell.area)


# ---------------------------------------------------------------- end to end, on real patches

MARGIN = 96  # patch pixels of white around each mosaic
P = 96
GRID = 6  # patches a side
# (row, column, rows, columns) of each lesion, per tumour slide; the last slide's two lesions are 2 patch rows
# (187 µm) apart, more than twice the 75 µm growth, so they stay two lesions
LESIONS = [[(1, 2, 3, 3)], [(3, 0, 3, 3)], [(0, 0, 3, 3)], [(2, 3, 3, 3)], [(2, 2, 3, 3)], [(0, 0, 2, 2), (4, 0, 2, 3)]]
NORMAL_SLIDES = 6


def lesion_polygon(row, col, rows, cols):
    """A block of patches in level-0 pixels (the mosaic's level 0 is 2x its patches' resolution)."""
    return shapely.box(2 * (MARGIN + col * P), 2 * (MARGIN + row * P), 2 * (MARGIN + (col + cols) * P),
                       2 * (MARGIN + (row + rows) * P))


@pytest.fixture(scope="module")
def synthetic_slides(tmp_path_factory):
    """Mosaics of real labelled patches the run never saw: 6 with tumour laid out as contiguous lesions among
    normal patches, 6 of normal patches only; and the lesions as QuPath would export them."""
    root = tmp_path_factory.mktemp("slide-eval")
    seen = set(pd.read_csv(serve_runs.histo_data(tmp_path_factory) / "train_labels.csv")["id"])
    labels = pd.read_csv(HISTO / "train_labels.csv")
    unseen = labels[~labels["id"].isin(seen)].sample(frac=1, random_state=4)
    tumour = iter(unseen[unseen["label"] == 1]["id"])
    normal = iter(unseen[unseen["label"] == 0]["id"])
    slides, notes = root / "slides", root / "annotations"
    slides.mkdir()
    notes.mkdir()
    for k, lesions in enumerate(LESIONS + [[]] * NORMAL_SLIDES):
        name = f"tumour_{k}" if lesions else f"normal_{k}"
        in_lesion = np.zeros((GRID, GRID), bool)
        for row, col, rows, cols in lesions:
            in_lesion[row:row + rows, col:col + cols] = True
        ids = [next(tumour) if hot else next(normal) for hot in in_lesion.ravel()]
        image = mosaic.mosaic_image(mosaic.read_patches(HISTO / "train", ids), GRID, GRID, MARGIN)
        mosaic.write_mosaic(slides / f"{name}.tif", image)
        if lesions:
            features = [qupath_feature(shapely.geometry.mapping(lesion_polygon(*lesion))) for lesion in lesions]
            (notes / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return slides, notes


@pytest.mark.slow  # trains the serve tests' shared run when they have not (minutes on CPU); scoring takes seconds
def test_slide_eval_end_to_end_on_real_patches(synthetic_slides, tmp_path_factory, tmp_path, capsys):
    run = serve_runs.histo_run(tmp_path_factory)
    slides, notes = synthetic_slides
    out = tmp_path / "scored"
    assert main(["histo", "slide", run, "--image", slides, "--out", out, "--stride", "96", "--device", "cpu",
                 "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["histo", "slide-eval", out, "--annotations", notes, "--out", tmp_path / "eval"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "slide AUC" in printed and "FROC average sensitivity" in printed
    assert (report["slides"], report["tumour_slides"], report["lesions"], report["itc_lesions"]) == (12, 6, 7, 0)
    table = pd.read_csv(tmp_path / "eval" / "slides.csv")
    tumour, normal = (table[table["tumour"] == t]["score"] for t in (1, 0))
    # 6 against 6 slides: a random ranking reaches AUC >= 0.8 with probability about 0.03 (Mann-Whitney)
    assert report["slide_auc"] >= 0.8, table[["slide", "score"]]
    assert tumour.median() > normal.median()
    assert report["lesions_detected"] >= 6, "the lesions are found at the lowest confidence"
    assert report["froc"]["sensitivity_at_fps"]["8"] >= 0.7
    assert report["froc"]["average_sensitivity"] >= 0.3
    assert report["unused_annotations"] == []
    # the slide outputs themselves follow QuPath's import format
    first = out / "tumour_0"
    check_qupath_geojson(json.loads((first / "tiles.geojson").read_text()), "tile")
    check_qupath_geojson(json.loads((first / "regions.geojson").read_text()), "annotation")
