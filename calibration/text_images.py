"""Synthetic document and scene text images for calibrating text detectors (PP-OCR det and the like).

    python calibration/text_images.py OUT_DIR [--count 60] [--size 992x736] [--seed 0]

Each image is a background (a plain paper tone, a colour gradient, or a crop of one of the photos
shipped inside scikit-image, lightened or not) with several blocks of random text on it: lines of
Latin words, numbers (prices, dates, codes, phone numbers) and punctuation, each block in its own
font, size, colour and slight rotation, some on a coloured label like a sign or a sticker. The
fonts are Pillow's built-in scalable font plus every TrueType font found in the usual system
folders (DejaVu and the like) and matplotlib's bundled ones where installed.

Deterministic: image ``i`` of seed ``s`` depends only on ``(s, i)``, the image size and the fonts
found on the machine, so two runs give byte-identical PNG files, and ``--count 20`` is the first 20
of ``--count 60``. Files are ``text_<seed>_<i>.png``, each written atomically (a temporary file
renamed into place), so a reader never sees half a file; existing files are left as they are
unless ``overwrite``. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["find_fonts", "parse_size", "render_text_image", "text_image_name", "write_text_images"]

#: photos bundled with scikit-image (no download): backgrounds for "scene text"
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "colorwheel", "camera", "clock", "coins", "moon", "grass", "gravel", "brick")

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")

WORDS = """
the of and to in for on with by from at as is are was be this that new open close total date time price
order invoice number name address city street road station exit entrance north south east west floor room
page chapter section table figure note summary report account balance amount paid due tax net gross item
quantity unit weight size colour model serial batch lot expiry made product service customer support phone
email office hours monday tuesday wednesday thursday friday saturday sunday january february march april
may june july august september october november december warning caution danger keep out private parking
only no smoking please thank you welcome sale discount free offer today menu coffee tea water bread cheese
soup salad pasta pizza chicken fish rice special breakfast lunch dinner open daily market bank hotel museum
library school hospital pharmacy police airport terminal gate platform train bus ticket single return adult
child student senior zone line route delay cancelled arrival departure information lorem ipsum dolor sit
amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua enim ad
minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure
in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint occaecat cupidatat non
proident sunt culpa qui officia deserunt mollit anim id est laborum
""".split()

#: parts of the file names of symbol, math and fallback fonts: their letters are not letters
NOT_TEXT_FONTS = ("Math", "Sym", "NonUni", "LastResort", "cmex", "cmsy", "cmmi")

PUNCTUATION = (",", ".", ":", ";", "!", "?", " -", " /", " &", " |")


@dataclass(frozen=True)
class Font:
    """A scalable font: a TrueType file, or None for Pillow's built-in one."""

    path: Path | None

    def at(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if self.path is None:
            return ImageFont.load_default(size=size)
        return ImageFont.truetype(str(self.path), size=size)


def find_fonts() -> list[Font]:
    """Pillow's built-in scalable font, then the TrueType fonts on this machine, in path order."""
    dirs = list(FONT_DIRS)
    spec = importlib.util.find_spec("matplotlib")  # located, not imported: importing it is slow
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf")
    paths: set[Path] = set()
    for folder in dirs:
        if folder.is_dir():
            paths.update(p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and p.is_file())
    fonts = [Font(None)]
    for path in sorted(paths, key=lambda p: p.name):  # by name: the same font in two folders once
        if path.name in {f.path.name for f in fonts if f.path} or any(k in path.name for k in NOT_TEXT_FONTS):
            continue
        try:
            ImageFont.truetype(str(path), size=12).getbbox("Ag")
        except OSError:
            continue
        fonts.append(Font(path))
    return fonts


def load_photos() -> list[np.ndarray]:
    """The RGB uint8 photos of ``PHOTO_NAMES`` that this scikit-image has locally."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a data set this version would have to download: skip it, we are offline
            continue
        if img.dtype != np.uint8:
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        photos.append(np.ascontiguousarray(img[..., :3]))
    return photos


def parse_size(text: str) -> tuple[int, int]:
    """``"992x736"`` -> ``(992, 736)``: width x height."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 992x736, got {text!r}") from None
    if width < 32 or height < 32:
        raise ValueError(f"size must be at least 32x32, got {text!r}")
    return width, height


def text_image_name(seed: int, index: int) -> str:
    return f"text_{seed}_{index:04d}.png"


# ---------------------------------------------------------------------------------------------
# backgrounds


def _paper_tone(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(205, 252)
    return np.clip(base + rng.normal(0, 8, 3) + np.array([4, 1, -8]) * rng.uniform(0, 2), 0, 255)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _plain(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    img = np.broadcast_to(_paper_tone(rng), (height, width, 3)).astype(np.float32)
    return img + rng.normal(0, rng.uniform(0.5, 4), (height, width, 1)).astype(np.float32)  # paper grain


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    first = _paper_tone(rng) if rng.random() < 0.5 else _random_colour(rng)
    second = _random_colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return first * (1 - t[..., None]) + second * t[..., None]


def _photo(rng: np.random.Generator, width: int, height: int, photos: list[np.ndarray]) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    aspect = width / height
    crop_h = int(h * rng.uniform(0.4, 1.0))
    crop_w = min(w, int(crop_h * aspect))
    crop_h = min(crop_h, int(crop_w / aspect))
    top, left = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
    patch = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize((width, height), Image.BILINEAR)
    img = np.asarray(patch, np.float32)
    if rng.random() < 0.6:  # a poster or a window: the photo washed out towards a light tone
        alpha = rng.uniform(0.3, 0.75)
        img = img * (1 - alpha) + _paper_tone(rng) * alpha
    return img


def _background(rng: np.random.Generator, width: int, height: int, photos: list[np.ndarray]) -> np.ndarray:
    kind = rng.random()
    if kind < 0.35 or (kind >= 0.65 and not photos):
        return _plain(rng, width, height)
    if kind < 0.65:
        return _gradient(rng, width, height)
    return _photo(rng, width, height, photos)


# ---------------------------------------------------------------------------------------------
# text


def _token(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.72:
        word = WORDS[int(rng.integers(len(WORDS)))]
        style = rng.random()
        if style < 0.2:
            return word.upper()
        if style < 0.5:
            return word.capitalize()
        return word
    choice = int(rng.integers(7))
    n = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    if choice == 0:
        return f"{n(1, 999)}.{n(0, 100):02d}"
    if choice == 1:
        return f"{n(1990, 2031)}-{n(1, 13):02d}-{n(1, 29):02d}"
    if choice == 2:
        return f"{n(0, 24):02d}:{n(0, 60):02d}"
    if choice == 3:
        return f"+{n(1, 99)} {n(10, 99)} {n(1000, 9999)} {n(1000, 9999)}"
    if choice == 4:
        letters = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, n(2, 4)))
        return f"{letters}-{n(100, 99999)}"
    if choice == 5:
        return f"{n(1, 100)}%"
    return str(n(1, 100000))


def _line(rng: np.random.Generator) -> str:
    parts = []
    for _ in range(int(rng.integers(1, 9))):
        token = _token(rng)
        if parts and rng.random() < 0.15:
            parts[-1] += PUNCTUATION[int(rng.integers(len(PUNCTUATION)))]
        parts.append(token)
    if rng.random() < 0.3:
        parts[-1] += "." if rng.random() < 0.7 else ":"
    return " ".join(parts)


def _luminance(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def _contrasting(rng: np.random.Generator, behind: np.ndarray) -> tuple[int, int, int]:
    """A text colour readable on a background of mean colour ``behind``: dark on light, light on dark."""
    if _luminance(behind) > 128:
        colour = rng.uniform(0, 90, 3) if rng.random() < 0.8 else rng.uniform(0, 140, 3) * np.array([1.3, 0.5, 0.5])
    else:
        colour = rng.uniform(200, 255, 3) if rng.random() < 0.8 else rng.uniform(150, 255, 3)
    return tuple(int(v) for v in np.clip(colour, 0, 255))


def _block(rng: np.random.Generator, fonts: list[Font], width: int, height: int
           ) -> tuple[list[str], ImageFont.FreeTypeFont | ImageFont.ImageFont, int, bool]:
    """(lines, font, line spacing, on a label) of one text block."""
    heading = rng.random() < 0.2
    low, high = (28, max(29, height // 9)) if heading else (11, max(12, height // 22))
    size = int(rng.integers(low, high + 1))
    font = fonts[int(rng.integers(len(fonts)))].at(size)
    lines = [_line(rng) for _ in range(1 if heading else int(rng.integers(1, 7)))]
    return lines, font, int(size * rng.uniform(1.15, 1.6)), rng.random() < 0.3


def _render_block(rng: np.random.Generator, img: Image.Image, fonts: list[Font], taken: list[tuple[int, ...]]
                  ) -> None:
    width, height = img.size
    lines, font, spacing, label = _block(rng, fonts, width, height)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    widths = [measure.textbbox((0, 0), line, font=font)[2] for line in lines]
    pad = spacing // 3 + 2
    layer_w, layer_h = max(widths) + 2 * pad, spacing * len(lines) + 2 * pad
    if layer_w >= width or layer_h >= height:
        lines = lines[:1]
        words = lines[0].split()
        while words and measure.textbbox((0, 0), " ".join(words), font=font)[2] + 2 * pad >= width:
            words.pop()
        if not words:
            return
        lines = [" ".join(words)]
        layer_w = measure.textbbox((0, 0), lines[0], font=font)[2] + 2 * pad
        layer_h = spacing + 2 * pad
        if layer_h >= height:
            return
    layer = Image.new("RGBA", (layer_w, layer_h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    angle = rng.uniform(-6, 6) if rng.random() < 0.5 else rng.uniform(-1.2, 1.2)
    # where it goes: a few tries at a free spot, else overlapping is allowed (real clutter)
    for _ in range(25):
        left, top = int(rng.integers(0, width - layer_w + 1)), int(rng.integers(0, height - layer_h + 1))
        box = (left, top, left + layer_w, top + layer_h)
        if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
            break
    else:
        return
    taken.append(box)
    behind = np.asarray(img.crop(box), np.float32)[..., :3].reshape(-1, 3).mean(0)
    if label:
        fill = _random_colour(rng)
        draw.rounded_rectangle((0, 0, layer_w - 1, layer_h - 1), radius=int(rng.integers(0, pad + 1)),
                               fill=tuple(int(v) for v in fill) + (255,))
        behind = fill
    colour = _contrasting(rng, behind) + (int(rng.integers(200, 256)),)
    align = int(rng.integers(3))
    for i, (line, line_w) in enumerate(zip(lines, widths, strict=False)):
        x = pad + (0, (max(widths) - line_w) // 2, max(widths) - line_w)[align] if len(lines) > 1 else pad
        draw.text((x, pad + i * spacing), line, font=font, fill=colour)
    layer = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
    left = min(box[0], width - layer.width) if layer.width <= width else 0
    top = min(box[1], height - layer.height) if layer.height <= height else 0
    img.alpha_composite(layer, (max(left, 0), max(top, 0)))


def render_text_image(rng: np.random.Generator, width: int, height: int, fonts: list[Font],
                      photos: list[np.ndarray]) -> Image.Image:
    """One RGB image of ``width`` x ``height``: a background with several text blocks."""
    background = _background(rng, width, height, photos)
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).convert("RGBA")
    taken: list[tuple[int, ...]] = []
    for _ in range(int(rng.integers(3, 13))):
        _render_block(rng, img, fonts, taken)
    out = img.convert("RGB")
    if rng.random() < 0.3:  # a camera's softness
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.4:  # sensor noise
        noisy = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(2, 8), (height, width, 1))
        out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def write_text_images(out_dir: str | os.PathLike, count: int, *, size: tuple[int, int] = (992, 736), seed: int = 0,
                      overwrite: bool = False) -> list[Path]:
    """Write ``count`` text images of ``size`` (width, height) into ``out_dir`` (made if missing);
    returns their paths in order. Image ``i`` depends only on ``(seed, i)`` and ``size``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    width, height = size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fonts, photos = None, None
    paths = []
    for index in range(count):
        path = out / text_image_name(seed, index)
        paths.append(path)
        if path.exists() and not overwrite:
            continue
        if fonts is None:
            fonts, photos = find_fonts(), load_photos()
        image = render_text_image(np.random.default_rng([seed, index]), width, height, fonts, photos)
        tmp = out / f".{path.name}.{os.getpid()}.tmp"
        try:
            image.save(tmp, format="PNG")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--size", default="992x736", help="WIDTHxHEIGHT (default 992x736: PP-OCR det at 736x992)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="re-render files that exist")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.count < 0:
        parser.error("--count must be >= 0")
    paths = write_text_images(args.out_dir, args.count, size=size, seed=args.seed, overwrite=args.overwrite)
    print(f"{len(paths)} text images of {size[0]}x{size[1]} (seed {args.seed}) in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
