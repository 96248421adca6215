"""Small class-per-folder image datasets drawn for the tests (no image data is shipped).

Three learnable classes (a filled circle, square or triangle on a random background), of
mixed sizes, as PNG and JPEG, RGB and grayscale, plus the strays a real folder has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw(kind: str, size: tuple[int, int], rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """One image of class `kind`: the shape, large and bright, on a darker background."""
    width, height = size
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    colour = tuple(int(v) for v in rng.integers(160, 256, 3))
    image = Image.new("RGB", (width, height), background)
    pen = ImageDraw.Draw(image)
    box = (width * 0.15, height * 0.15, width * 0.85, height * 0.85)
    if kind == "circle":
        pen.ellipse(box, fill=colour)
    elif kind == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(width / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    return image.convert(mode)


def write_images(folder: Path, kind: str, count: int, rng: np.random.Generator, *,
                 sizes=(20, 48), grayscale_share: float = 0.25, start: int = 0) -> list[Path]:
    """`count` images of `kind` in `folder`, alternating PNG and JPEG, some grayscale."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        size = tuple(int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        mode = "L" if rng.random() < grayscale_share else "RGB"
        image = draw(kind, size, rng, mode)
        path = folder / f"{kind}_{i:04d}.{'png' if i % 2 else 'jpg'}"
        image.save(path, quality=92) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def add_strays(folder: Path) -> list[Path]:
    """What users' folders also hold: a Finder file and a note (skipped, never read as images)."""
    strays = [folder / ".DS_Store", folder / "notes.txt"]
    strays[0].write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    strays[1].write_text("taken on holiday\n")
    return strays


def add_broken(folder: Path, rng: np.random.Generator) -> list[Path]:
    """A truncated JPEG and an empty `.jpg`: both look like images by name and do not decode."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.jpg"
    draw("circle", (40, 40), rng).save(truncated, quality=92)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    return [truncated, empty]


def flat_folder(root: Path, per_class: int = 30, seed: int = 0, **kwargs) -> Path:
    """DIR/<class>/* with strays."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        write_images(root / kind, kind, per_class, rng, **kwargs)
    add_strays(root)
    add_strays(root / CLASSES[0])
    return root


def split_folder(root: Path, train: int = 30, test: int = 8, validation: int = 0, seed: int = 0, **kwargs) -> Path:
    """DIR/train/<class>/*, DIR/test/<class>/* (and DIR/validation/ when asked) with strays."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("validation", validation), ("test", test)):
        if not count:
            continue
        for kind in CLASSES:
            write_images(root / split / kind, kind, count, rng, start=0 if split == "train" else 1000, **kwargs)
    add_strays(root)
    add_strays(root / "train" / CLASSES[1])
    return root
