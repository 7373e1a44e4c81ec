"""Phone-photo augmentations of catalog photos (SimCLR-style views), deterministic per seed.

A shopper's own photo of a garment differs from the catalog's studio photo (garment on a plain light
background, 240x360) in framing, angle, light, background and compression. :func:`phone_photo` turns a
catalog photo into such a "phone photo": the garment (its foreground, :func:`foreground_mask`) is rotated
and pasted on a plain or a cluttered background (a bed/floor-like noise texture or a collage of other
photos), then randomly cropped and resized, colour-jittered, given an uneven light, blurred and
JPEG re-compressed. These are the view transformations of SimCLR (Chen et al. 2020, "A Simple Framework
for Contrastive Learning of Visual Representations", §3 and Appendix A: random resized crop, colour
distortion, Gaussian blur), plus the background and compression a phone adds.

Every random draw comes from the ``numpy.random.Generator`` passed in, so the same generator state
gives the same photo (:func:`item_rng` seeds one per (seed, item key), independent of order).
:func:`garment_crop` is the query-time counterpart: crop a photo to its foreground box.
:func:`phone_photo_features` makes phone photos of catalog photos and runs them through an encoder (the
photo-search evaluation's queries, SimCLR view features, cached tower-prefix activations of views).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage
from tqdm.auto import tqdm

#: Output size (width, height) of :func:`phone_photo`: a 3:4 phone frame.
PHONE_SIZE = (300, 400)


def item_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by ``(seed, key)`` (SHA-256 of the key), the same on every run and in any order."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def foreground_mask(rgb: np.ndarray, threshold: float = 28.0) -> np.ndarray:
    """The pixels that differ from the photo's border colour: a studio photo's garment.

    Args:
        rgb: (H, W, 3) uint8 photo.
        threshold: largest channel difference (0..255) from the median border colour still counted as
            background.

    Returns:
        (H, W) bool, True on the foreground; holes filled and specks (openings of 3x3) removed.
        All False when nothing differs from the border.

    Raises:
        ValueError: ``rgb`` is not (H, W, 3).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got {rgb.shape}")
    a = rgb.astype(np.int16)
    border = np.concatenate(
        [a[:3].reshape(-1, 3), a[-3:].reshape(-1, 3), a[:, :3].reshape(-1, 3), a[:, -3:].reshape(-1, 3)]
    )
    ref = np.median(border, axis=0)  # (3,)
    mask = np.abs(a - ref).max(axis=2) > threshold  # (H, W)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    mask = ndimage.binary_closing(mask, structure=np.ones((5, 5)), iterations=2)
    return ndimage.binary_fill_holes(mask)


def foreground_box(rgb: np.ndarray, threshold: float = 28.0) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` pixel box of the largest foreground component
    (:func:`foreground_mask`), or None when there is no foreground."""
    mask = foreground_mask(rgb, threshold)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = labels == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(keep)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def garment_crop(
    image: Image.Image, *, pad: float = 0.08, min_area: float = 0.04, max_area: float = 0.9
) -> Image.Image:
    """Crop a photo to its garment: the foreground box from the border colour (:func:`foreground_box`),
    padded by ``pad`` of its size on each side. The photo is returned whole when the box covers less
    than ``min_area`` or more than ``max_area`` of it (no clear garment on a uniform background)."""
    rgb = np.asarray(image.convert("RGB"))
    box = foreground_box(rgb)
    if box is None:
        return image
    left, top, right, bottom = box
    h, w = rgb.shape[:2]
    area = (right - left) * (bottom - top) / (w * h)
    if not min_area <= area <= max_area:
        return image
    dx, dy = int(pad * (right - left)), int(pad * (bottom - top))
    return image.crop((max(0, left - dx), max(0, top - dy), min(w, right + dx), min(h, bottom + dy)))


# -----------------------------------------------------------------------------
# backgrounds


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: uniform noise on a ``cells``-wide grid, upsampled bicubically."""
    w, h = size
    grid = rng.random((max(2, cells * h // w), cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)).clip(0, 1)


def plain_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A plain surface (sheet, wall, table): one colour, a soft light gradient and sensor noise."""
    w, h = size
    colour = rng.uniform(60, 245, size=3) * rng.uniform(0.85, 1.0, size=3)  # (3,)
    ramp = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0), h, dtype=np.float32)[:, None, None]
    img = colour[None, None, :] * ramp + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def cluttered_background(
    rng: np.random.Generator, size: tuple[int, int], donors: Sequence[Image.Image] = ()
) -> Image.Image:
    """A busy surface: a floor of wooden planks, a patterned bed sheet (smooth noise in two colours), or,
    with ``donors``, a blurred collage of crops of other photos (clothes lying around)."""
    w, h = size
    kind = rng.integers(3 if donors else 2)
    if kind == 0:  # wooden floor: planks of one hue, grain along x
        base = rng.uniform(80, 200, size=3) * np.array([1.0, 0.8, 0.6])
        n_planks = int(rng.integers(3, 7))
        rows = (np.arange(h) * n_planks // h)[:, None]  # (H, 1) plank index
        shade = rng.uniform(0.75, 1.1, size=n_planks)[rows]  # (H, 1)
        grain = _smooth_noise(rng, (w, h), 40)[:, :, None] * 0.25 + 0.85
        img = base[None, None, :] * shade[:, :, None] * grain
        img[(np.arange(h) * n_planks % h) < n_planks] *= 0.5  # dark seams between planks
    elif kind == 1:  # patterned sheet: two colours mixed by smooth noise, with folds
        c1, c2 = rng.uniform(30, 250, size=(2, 3))
        t = _smooth_noise(rng, (w, h), int(rng.integers(4, 16)))[:, :, None]
        folds = 0.85 + 0.15 * _smooth_noise(rng, (w, h), 3)[:, :, None]
        img = (c1 * t + c2 * (1 - t)) * folds
    else:  # a collage of other photos
        canvas = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        for _ in range(int(rng.integers(3, 7))):
            d = donors[int(rng.integers(len(donors)))].convert("RGB")
            s = rng.uniform(0.4, 0.9)
            d = d.resize((max(1, int(d.width * s * w / 240)), max(1, int(d.height * s * w / 240))))
            d = d.rotate(float(rng.uniform(-90, 90)), expand=True, fillcolor=(128, 128, 128))
            canvas.paste(d, (int(rng.integers(-d.width // 2, w)), int(rng.integers(-d.height // 2, h))))
        return canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0))))
    img = img + rng.normal(0, 5, (h, w, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


# -----------------------------------------------------------------------------
# the phone photo


def _random_resized_box(
    rng: np.random.Generator, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with a NumPy generator: a box of ``scale`` of the
    area and aspect ratio (log-uniform) in ``ratio``; the whole image after 10 misses."""
    w, h = size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        r = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw, ch = round(np.sqrt(area * r)), round(np.sqrt(area / r))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    return 0, 0, w, h


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` of a turn (torchvision's ``adjust_hue``, in PIL's 8-bit HSV)."""
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def phone_photo(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    donors: Sequence[Image.Image] = (),
    p_cluttered: float = 0.5,
    out_size: tuple[int, int] = PHONE_SIZE,
) -> Image.Image:
    """A "phone photo" of a catalog photo's garment, every choice drawn from ``rng``.

    Steps: the garment (:func:`foreground_mask`; the whole photo when none is found) is rotated by
    U(-30°, 30°), scaled to 55–95% of the frame's height and pasted at a random place on a plain
    (:func:`plain_background`) or, with probability ``p_cluttered``, a cluttered
    (:func:`cluttered_background`) surface; then a random resized crop (50–100% of the area, aspect
    3:4 ± 25%) back to ``out_size``; colour jitter (brightness, contrast, saturation ×U(0.6, 1.4), hue
    ±0.05 turn; SimCLR's strength 0.4 / 0.1), an uneven light (a linear ramp ×0.65–1.0), a Gaussian blur
    (σ U(0.1, 2) px, half of the time; SimCLR's) and JPEG re-compression at quality U{25..85}.

    Args:
        image: a catalog photo (any mode; converted to RGB).
        rng: the generator every random choice is drawn from (:func:`item_rng`).
        donors: other photos for the collage backgrounds (none: only planks and sheets).
        p_cluttered: probability of a cluttered background.
        out_size: (width, height) of the result.

    Returns:
        An RGB ``PIL.Image`` of ``out_size``, decoded from its JPEG bytes.
    """
    src = image.convert("RGB")
    rgb = np.asarray(src)
    mask = foreground_mask(rgb)
    if mask.mean() < 0.02:  # no garment found: use the whole photo
        mask = np.ones(mask.shape, dtype=bool)
    garment = src.copy()
    garment.putalpha(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1)))
    bbox = garment.getchannel("A").getbbox() or (0, 0, src.width, src.height)
    garment = garment.crop(bbox).rotate(
        float(rng.uniform(-30, 30)), expand=True, resample=Image.Resampling.BICUBIC
    )
    w, h = out_size
    canvas_size = (int(w * 1.3), int(h * 1.3))
    cluttered = rng.random() < p_cluttered
    bg = cluttered_background(rng, canvas_size, donors) if cluttered else plain_background(rng, canvas_size)
    s = rng.uniform(0.55, 0.95) * canvas_size[1] / garment.height
    s = min(s, 0.95 * canvas_size[0] / garment.width)
    garment = garment.resize(
        (max(1, int(garment.width * s)), max(1, int(garment.height * s))), Image.Resampling.BICUBIC
    )
    x = int(rng.integers(0, max(1, canvas_size[0] - garment.width + 1)))
    y = int(rng.integers(0, max(1, canvas_size[1] - garment.height + 1)))
    bg.paste(garment, (x, y), garment)
    box = _random_resized_box(rng, canvas_size, (0.5, 1.0), (0.75 * w / h, 1.25 * w / h))
    photo = bg.crop(box).resize(out_size, Image.Resampling.BILINEAR)
    photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.6, 1.4))
    photo = ImageEnhance.Contrast(photo).enhance(rng.uniform(0.6, 1.4))
    photo = ImageEnhance.Color(photo).enhance(rng.uniform(0.6, 1.4))
    photo = _shift_hue(photo, rng.uniform(-0.05, 0.05))
    a, b = rng.uniform(0.65, 1.0, size=2)
    ramp = np.linspace(a, b, w if rng.random() < 0.5 else h, dtype=np.float32)
    ramp = ramp[None, :, None] if len(ramp) == w else ramp[:, None, None]
    photo = Image.fromarray((np.asarray(photo).astype(np.float32) * ramp).clip(0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        photo = photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.1, 2.0))))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=int(rng.integers(25, 86)))
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


# -----------------------------------------------------------------------------
# phone photos of catalog photos, through an encoder


def donor_photos(paths: Sequence[str], n: int, seed: int) -> list[Image.Image]:
    """``n`` photos drawn (seeded) from ``paths``, decoded, for the collage backgrounds; a file that cannot
    be read is skipped (fewer donors, never an error)."""
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
    out = []
    for i in sorted(pick):
        try:
            with Image.open(paths[i]) as im:
                out.append(im.convert("RGB"))
        except OSError:  # missing, truncated or not an image: one background fewer
            continue
    return out


def _phone_photos(
    paths: Sequence[str], keys: Sequence[str], seeds: Sequence[int], donors: Sequence[Image.Image], crop: bool
) -> Iterator[tuple[int, list[Image.Image]]]:
    """Per item i: ``(i, [phone photo of seed s for s in seeds] (+ their garment crops when crop))``,
    in item order, made in two threads (Pillow and NumPy release the GIL) one chunk of 16 items ahead
    of the caller (bounded memory)."""

    def make(i: int) -> list[Image.Image]:
        with Image.open(paths[i]) as im:
            src = im.convert("RGB")
        views = [phone_photo(src, item_rng(s, f"{keys[i]}"), donors=donors) for s in seeds]
        return views + ([garment_crop(v) for v in views] if crop else [])

    chunks = [range(s, min(s + 16, len(paths))) for s in range(0, len(paths), 16)]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="phone") as pool:
        ahead = [pool.submit(lambda c=c: [make(i) for i in c]) for c in chunks[:1]]
        for j, chunk in enumerate(chunks):
            if j + 1 < len(chunks):
                ahead.append(pool.submit(lambda c=chunks[j + 1]: [make(i) for i in c]))
            yield from zip(chunk, ahead.pop(0).result(), strict=True)


def phone_photo_features(
    extractor: Any,
    paths: Sequence[str],
    keys: Sequence[str],
    seeds: Sequence[int],
    *,
    donors: Sequence[Image.Image] = (),
    crop: bool = False,
    progress: bool = True,
    desc: str = "phone photos",
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Image-tower features of phone photos (:func:`ml.augment.phone_photo`) of N catalog photos.

    Args:
        extractor: an ``ml.features.FeatureExtractor`` (its ``encode_pil``).
        paths, keys: N photo files and their stable keys (article ids; with the seed they fix each photo).
        seeds: V seeds, one view each (``ml.augment.item_rng(seed, key)``).
        donors: photos for the collage backgrounds.
        crop: also encode each view cropped to its garment (:func:`ml.augment.garment_crop`).
        on_batch: called with ``(photos done, N)`` after each encoded batch.

    Returns:
        (N, V, E) float32 unnormalised features, or (N, 2V, E) with ``crop`` (the V crops after the V views).
    """
    n_out = len(seeds) * (2 if crop else 1)
    out = np.zeros((len(paths), n_out, extractor.embed_dim), dtype=np.float32)
    batch: list[Image.Image] = []
    rows: list[int] = []
    bs = extractor.batch_size

    def flush() -> None:
        feats = extractor.encode_pil(batch)  # (len(batch), E)
        out.reshape(-1, out.shape[2])[rows] = feats
        batch.clear()
        rows.clear()

    with tqdm(total=len(paths), unit="photo", desc=desc, disable=not progress) as bar:
        for i, imgs in _phone_photos(paths, keys, seeds, donors, crop):
            batch.extend(imgs)
            rows.extend(i * n_out + j for j in range(n_out))
            if len(batch) >= bs:
                flush()
                if on_batch is not None:
                    on_batch(i + 1, len(paths))
            bar.update(1)
        if batch:
            flush()
    if on_batch is not None:
        on_batch(len(paths), len(paths))
    return out


def training_view_features(
    extractor: Any,
    paths: Sequence[str],
    keys: Sequence[str],
    donor_pool: Sequence[str],
    *,
    views: int,
    seed: int = 0,
    donors: int = 200,
    progress: bool = True,
    desc: str = "training views",
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The training recipe of phone-photo views: :func:`phone_photo_features` of ``views`` views per photo
    (seeds ``seed`` .. ``seed + views - 1``; the evaluation's queries use another seed) on collage
    backgrounds from ``donors`` photos of ``donor_pool`` (drawn with ``seed + 7``): (N, views, D) float32.
    ``on_batch(photos done, N)`` as for :func:`phone_photo_features`.
    """
    return phone_photo_features(
        extractor,
        paths,
        keys,
        list(range(seed, seed + views)),
        donors=donor_photos(donor_pool, donors, seed + 7),
        progress=progress,
        desc=desc,
        on_batch=on_batch,
    )
