"""Tumour annotations as pathologists export them, in level-0 pixels: QuPath GeoJSON and Camelyon16's XML.

GeoJSON is read the way QuPath reads it (qupath-core, `GsonTools.parseObjectsFromGeoJSON` and
`QuPathTypeAdapters.PathObjectTypeAdapter`): a FeatureCollection, a Feature, a bare geometry or a JSON array of
these; the object type from `properties.objectType` (QuPath 0.4+), `object_type` (0.3) or a legacy `id` such
as "PathAnnotationObject" (0.2), an object with none being an annotation; the class from
`properties.classification` as {"name"} or {"names"} (a derived class, "Tumor: Positive") or a plain string.
Only annotations are ground truth: detections, tiles and cells (a slide's own `tiles.geojson` brought back
from QuPath) are skipped. Camelyon16's (ASAP's) XML: each `<Annotation>` with its `PartOfGroup` as its class.

Annotations of a tumour class (default "Tumor", and Camelyon16's groups "_0" and "_1"), or with no class, are
tumour; Camelyon16's group "_2" marks normal tissue inside a tumour annotation and is cut out of it; other
classes (Stroma, Immune cells, ...) are ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import shapely
from shapely.geometry import Polygon, shape

from ..errors import BadInput

TUMOUR_CLASSES = ("Tumor",)
CAMELYON_TUMOUR = ("_0", "_1")  # Camelyon16's groups of tumour annotations
EXCLUDED = ("_2", "exclusion")  # Camelyon16's group of normal regions inside tumour annotations
NOT_GROUND_TRUTH = {"detection", "tile", "cell", "tmacore", "tma_core", "root", "pathdetectionobject",
                    "pathtileobject", "pathcellobject", "tmacoreobject", "pathrootobject"}
EXTENSIONS = (".geojson", ".json", ".xml")


@dataclass
class Annotations:
    """A slide's tumour area (a shapely geometry, possibly empty) and what was read to make it."""

    path: Path
    tumour: object
    annotations: int = 0  # polygonal annotations read, of any class
    classes: dict = field(default_factory=dict)  # class name ("" for none) -> polygonal annotations of it


def find(folder: Path, names: list[str]) -> Path | None:
    """The first `<name><extension>` in `folder`, trying each name with each extension in turn."""
    for name in names:
        for ext in EXTENSIONS:
            path = folder / f"{name}{ext}"
            if path.is_file():
                return path
    return None


def read(path: Path, classes: tuple[str, ...] = TUMOUR_CLASSES) -> Annotations:
    """The tumour annotations of one slide; an unreadable file or one with annotations but none of tumour is
    a BadInput (a slide quietly taken as normal would hide the mistake)."""
    path = Path(path)
    try:
        polygons = _read_xml(path) if path.suffix.lower() == ".xml" else _read_geojson(path)
    except (OSError, ValueError, ElementTree.ParseError, KeyError, TypeError, AttributeError) as err:
        raise BadInput(f"{path}: not readable as QuPath GeoJSON or Camelyon16 XML ({err})") from None
    wanted = {c.lower() for c in classes} | set(CAMELYON_TUMOUR)
    tumour, excluded, counts = [], [], {}
    for name, polygon in polygons:
        counts[name] = counts.get(name, 0) + 1
        base = name.split(":")[0].strip().lower()  # a derived class ("Tumor: Positive") is its base class's
        if name.lower() in EXCLUDED:
            excluded.append(polygon)
        elif not name or base in wanted:
            tumour.append(polygon)
    area = shapely.union_all(tumour) if tumour else Polygon()
    if excluded and not area.is_empty:
        area = area.difference(shapely.union_all(excluded))
    if polygons and area.is_empty:
        found = ", ".join(f"{k or '(none)'}: {v}" for k, v in sorted(counts.items()))
        raise BadInput(f"{path}: {len(polygons)} annotations but none of a tumour class ({found}); "
                       f"name the tumour classes with --classes")
    return Annotations(path, area, len(polygons), counts)


def _polygonal(geometry) -> object | None:
    """The polygonal part of a geometry, made valid (hand-drawn outlines cross themselves), or None."""
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return None if geometry.is_empty else geometry
    if geometry.geom_type == "GeometryCollection":
        parts = [p for g in geometry.geoms if (p := _polygonal(g)) is not None]
        return shapely.union_all(parts) if parts else None
    return None  # points and lines enclose no tissue


def _read_geojson(path: Path) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []

    def visit(element) -> None:
        if isinstance(element, list):
            for item in element:
                visit(item)
        elif isinstance(element, dict):
            kind = element.get("type")
            if kind == "FeatureCollection":
                visit(element.get("features") or [])
            elif kind == "Feature":
                feature(element)
            elif "coordinates" in element or kind == "GeometryCollection":  # a bare geometry
                feature({"geometry": element})

    def feature(f: dict) -> None:
        props = f.get("properties") or {}
        object_type = props.get("objectType") or props.get("object_type") or props.get("type") or \
            (f["id"] if f.get("id") in {"PathAnnotationObject", "PathDetectionObject", "PathTileObject",
                                         "PathCellObject", "TMACoreObject"} else "annotation")
        if str(object_type).lower() in NOT_GROUND_TRUTH or f.get("geometry") is None:
            return
        polygon = _polygonal(shape(f["geometry"]))
        if polygon is not None:
            out.append((_class_name(props.get("classification")), polygon))

    visit(json.loads(path.read_text(encoding="utf-8")))
    return out


def _class_name(classification) -> str:
    if isinstance(classification, str):
        return classification
    if isinstance(classification, dict):
        if classification.get("name"):
            return str(classification["name"])
        if classification.get("names"):
            return ": ".join(str(n) for n in classification["names"])
    return ""


def _read_xml(path: Path) -> list[tuple[str, object]]:
    """ASAP's XML: <Annotation PartOfGroup=".." Type="Polygon|Spline|Rectangle|Dot"><Coordinates>
    <Coordinate Order=".." X=".." Y=".."/>...; dots and point sets enclose nothing and are skipped."""
    out = []
    for annotation in ElementTree.parse(path).getroot().iter("Annotation"):
        if annotation.get("Type", "Polygon").lower() in ("dot", "pointset"):
            continue
        points = sorted((int(c.get("Order", k)), _number(c.get("X")), _number(c.get("Y")))
                        for k, c in enumerate(annotation.iter("Coordinate")))
        if len(points) >= 3:
            polygon = _polygonal(Polygon([(x, y) for _, x, y in points]))
            if polygon is not None:
                out.append((annotation.get("PartOfGroup") or "", polygon))
    return out


def _number(text: str | None) -> float:
    return float(str(text).replace(",", "."))  # some ASAP versions write a locale's decimal comma
