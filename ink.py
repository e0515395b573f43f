"""Finding the ink on a page for predict.py: (H, W) grey in [0, 1] -> ink strength -> one mask per digit.

    grey  = on_sheet(_reduce(grey, WORK_SIDE))   # a sheet on a darker desk: the sheet, the desk painted paper
    ink   = ink_map(grey)                        # (H, W) in [0, 1]: 0 paper, 1 the darkest stroke
    masks = find_digits(ink)                     # [(H, W) bool], one per digit, left to right; [] = no ink

The paper is made light (light ink on dark paper, a canvas or a blackboard, is inverted); uneven light is divided out (the paper's brightness estimated by a grey closing
wider than the strokes, smoothed where that does not brighten it); the ink is what is above an Otsu threshold,
with fainter ink connected to it (hysteresis); long thin ruled or grid lines are removed;
connected components, far specks dropped, pieces that overlap horizontally joined into one
digit. scipy.ndimage and scikit-image do the image operations. Imports nothing of ours;
predict.py frames each mask as MNIST's and reads it.
"""

import numpy as np

MIN_SIDE = 56  # px: thumbnails (an 8x8 crop, a 28x28 MNIST image) are enlarged to at least this first; on_sheet leaves them alone
LIGHT_PAPER = 0.25  # ink_map: a lit part of the page covers at least this share of a picture whose border is mostly dark
EVEN_LIGHT = 0.06  # the border's 10th-90th percentile spread under which the light counts as even
HYSTERESIS_LOW = 0.5  # find_digits: connected ink down to this share of the threshold is ink
# A sheet on a darker desk (on_sheet): at least a fifth of the picture, nearly a quadrilateral,
# mostly paper; its outer 3% (edge, shadow) dropped
SHEET_AREA, SHEET_FILL, SHEET_PAPER, SHEET_RIM, SHEET_CONTRAST = 0.2, 0.8, 0.85, 0.03, 0.2
SHEET_SHARP = 0.5  # a sheet's edge: its grey step within 3 px, at least this share of the whole step
SHEET_OFF_INK, SHEET_OFF_PIXELS = 0.5, 0.0005  # strokes off the sheet: this much darker than around them, this share of the picture
# Printed structure around the digits (remove_structure). A frame: its holes are at least FRAME_HOLE
# of its filled area and hold FRAME_INSIDE of another piece, which spans FRAME_CONTENT of its height;
# an empty one is of thin lines (FRAME_THIN of its filled area), a rectangle (FRAME_RECT of its box
# filled) or an ellipse drawn true (its outline within ELLIPSE_FIT of its size of the fitted ellipse).
FRAME_HOLE, FRAME_INSIDE, FRAME_CONTENT, FRAME_RECT, FRAME_THIN = 0.3, 0.8, 0.25, 0.9, 0.35
ELLIPSE_FIT = 0.01
# A box a digit touches (one component with it): straight runs over BOX_SIDE of its width and height
# within BOX_EDGE of each of its four sides.
BOX_SIDE, BOX_EDGE = 0.8, 0.12
# A circle a digit touches: its filled outline at least RING_SOLID convex; its outer band, as wide as
# it stays RING_INKED inked, at most RING_MAX of the circle's size.
RING_SOLID, RING_INKED, RING_MAX, RING_DEEP = 0.9, 0.9, 0.1, 3  # the digit: ink RING_DEEP band widths inside
# An underline or a comb bracket: a horizontal run over RULE_SPAN of its width, ticks RULE_TICK of its
# height, together RULE_COVER of it; or a line RULE_ELONGATION times longer than thick within RULE_ANGLE
# degrees; with ink of at least RULE_OTHER of the largest piece ending above the run (RULE_TOUCH of its
# height may reach below it); pieces under RULE_MIN px are left alone.
RULE_SPAN, RULE_TICK, RULE_COVER, RULE_ELONGATION, RULE_ANGLE = 0.8, 0.6, 0.9, 6.0, 12.0
RULE_END = 0.15  # a comb bracket has a tick within this share of its width from each end (a serif's stem stands mid-way)
RULE_OTHER, RULE_TOUCH, RULE_MIN, RULE_BAR = 0.05, 0.1, 4, 3.0  # a solid bar RULE_BAR times wider than tall
# Signs written with digits (find_marks), in units of the tallest digit's height: a mark at most
# SIGN_MAX of it; a dot at most SIGN_DOT and at most SIGN_ROUND elongated (a taller one is a comma's
# tail), its centre below SIGN_LOW of the digits' height (a comma reaches SIGN_BELOW under them); a
# minus at least SIGN_BAR times wider than tall, its centre within SIGN_MID of the next digit's height.
SIGN_MAX, SIGN_DOT, SIGN_ROUND, SIGN_LOW, SIGN_BELOW, SIGN_BAR, SIGN_MID = 0.75, 0.35, 2.0, 0.6, 0.1, 2.0, (0.2, 0.8)
EDGE_LONG, EDGE_THIN = 0.25, 4  # _along_edge: a piece along the border, a quarter of its side long, 4x longer than thick
EDGE_TAPER = 0.75  # and a wedge: a tilted sheet's desk fills about half its box, a pen's stroke nearly all of it
GRID_LINES = 3  # _remove_lines: straight runs joined into one piece with this many parallel lines are a grid
SIGN_SHORT = 0.15  # a minus is at least this long
SIGN_TAIL = 1.4  # a comma's tail: at least this much taller than wide
SIGN_TAIL_FILL = 0.8  # and filling at most this share of its box (benchmarks/user_images.py's commas: 0.71 at most)
SIGN_FILL_MIN = 5  # px: below this either way, a mark's fill says nothing of its shape
# A dot or comma in its place is at least SIGN_MIN_PX both ways; a mark out of place at least SIGN_PEN_ODD
# of the digits' stroke width (a finer speck is dirt, joined or dropped as before)
SIGN_PEN_ODD, SIGN_MIN_PX = 0.8, 3
SIGN_CLEAR = 0.1  # a dot or bar further than this from every digit, and out of place, is a mark the reader cannot place


def _border(a: np.ndarray) -> np.ndarray:
    """The outermost pixels of (H, W), as one 1-D array."""
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def _reduce(grey: np.ndarray, side: int) -> np.ndarray:
    """Area-average (H, W) down so the longer side is at most `side` (integer factor)."""
    h, w = grey.shape
    f = int(np.ceil(max(h, w) / side))
    if f <= 1:
        return grey
    h2, w2 = h // f * f, w // f * f
    return grey[:h2, :w2].reshape(h2 // f, f, w2 // f, f).mean(axis=(1, 3))


def ink_map(grey: np.ndarray) -> np.ndarray:
    """(H, W) grey in [0, 1] -> (H, W) ink strength in [0, 1]: 0 paper, 1 the darkest stroke.

    The paper is light unless the border is dark even at its 90th percentile, or the border is
    mostly dark and what is as light as its lit part covers under LIGHT_PAPER of the image (then
    light ink on dark paper: a canvas; a blackboard with glare, or a dark-mode screenshot with a
    title bar, at one edge). A shadow over most of the border leaves the lit page light.
    Uneven light is divided out: the paper's brightness is a grey closing of the image with a
    window wider than the strokes (a fifth of the shorter side), smoothed where that makes it no
    brighter (a hard shadow's edge stays sharp)."""
    from scipy import ndimage as ndi

    g = grey.astype(np.float32)
    border = _border(g)
    lo, hi = np.percentile(border, [10, 90])
    dark = hi < 0.5 or (np.median(border) < 0.5 and (g > (lo + hi) / 2).mean() < LIGHT_PAPER)
    if dark:  # light ink on dark paper: make it dark ink on light paper
        g = 1.0 - g
    h, w = g.shape
    size = max(3, min(h, w) // 5)
    border = _border(g)
    if np.percentile(border, 90) - np.percentile(border, 10) < EVEN_LIGHT:
        paper = np.full_like(g, max(float(np.median(border)), 1e-3))  # even light (a scan, a canvas): leave it
    elif min(h, w) >= 48:
        closed = ndi.grey_closing(g, size=(size, size))  # keeps a hard shadow's step edge
        # Smoothed, except that smoothing never brightens it: across a hard shadow's edge the
        # smoothing carries the lit paper into the shadow, whose edge was then taken for a stroke.
        paper = np.minimum(ndi.uniform_filter(closed, size=size), closed)
        paper = np.maximum(paper, g)  # the paper is never darker than what is seen on it
    else:  # a thumbnail: too small to estimate the light; the border's paper level stands for it
        paper = np.full_like(g, max(float(np.median(border)), 1e-3))
    ink = 1.0 - g / np.maximum(paper, 1e-3)
    return np.clip(ink, 0.0, 1.0)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values.max()) / 2  # bilevel: half way


def _remove_lines(strong: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Drop ruled and grid lines from the mask `strong` (H, W) bool: straight thin horizontal
    or vertical runs at least half the image long that reach more than twice as far as the
    rest of the ink; a line not joined into a grid (GRID_LINES parallel lines or more) must also
    run past the rest at both ends by more than its thickness (a 1's stem ends where its upstroke
    begins: a stroke, kept). Where a line crosses a stroke, the stroke's
    pixels stay if they are clearly darker than the line."""
    from scipy import ndimage as ndi

    h, w = strong.shape
    out = strong.copy()
    runs = {}  # 1: the horizontal runs, 0: the vertical ones
    for axis, length in ((1, w), (0, h)):
        # a binary opening along one axis, as 1-D min then max filters (linear time in the length)
        n = max(3, length // 2)
        runs[axis] = ndi.maximum_filter1d(ndi.minimum_filter1d(strong.view(np.uint8), n, axis=axis), n, axis=axis) > 0
    lines = runs[0] | runs[1]
    if not lines.any():
        return out
    rest = strong & ~ndi.binary_dilation(lines, iterations=2)
    if not rest.any():
        return out  # only lines: it may be a "1" or a "-" drawn on its own
    rows, cols = np.nonzero(rest.any(1))[0], np.nonzero(rest.any(0))[0]
    extent_h, extent_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    labels, n = ndi.label(lines)
    line_level = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        lh, lw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        m = labels[sl] == i
        if max(ndi.label(runs[axis][sl] & m)[1] for axis in (0, 1)) >= GRID_LINES:
            # a grid (ruled lines joined by the margin, squared paper, a row of boxes): its reach is enough
            across = lw >= 2 * extent_w or lh >= 2 * extent_h
        else:  # a line, or two crossing (a large 4's stem and bar): they must also run past the rest at both ends
            across = (lw >= 2 * extent_w and sl[1].start < cols[0] - lh and sl[1].stop - 1 > cols[-1] + lh) or \
                     (lh >= 2 * extent_h and sl[0].start < rows[0] - lw and sl[0].stop - 1 > rows[-1] + lw)
        if across:
            out[sl][m] = False
            line_level.append(np.median(ink[sl][m]))
    if line_level:  # strokes crossing a line: keep pixels much darker than the lines
        level = float(np.max(line_level))
        out |= strong & (ink > level + 0.5 * (1 - level)) & ndi.binary_dilation(out, iterations=3)
    return out


def hysteresis(ink: np.ndarray, t: float) -> np.ndarray:
    """(H, W) ink strength and its threshold -> (H, W) bool ink mask, ruled lines taken out.

    Hysteresis thresholding (Canny 1986; skimage's apply_hysteresis_threshold): fainter ink, down
    to HYSTERESIS_LOW of `t`, counts where it is connected to ink above `t`. A hairline box-reduced
    to WORK_SIDE is split between two pixel rows at half strength where it runs along the grid,
    and fell apart under the threshold alone. Ruled and grid lines are taken out of both masks
    first, and a faint piece that reaches the image's border, or reaches further beyond the strong
    ink joined to it than that ink's size (the longer side of its box; other digits and specks do
    not count), is dropped: a faint line joined to the digit it crosses, not a stroke."""
    from scipy import ndimage as ndi

    seeds = _remove_lines(ink > t, ink)
    if not seeds.any():
        return seeds
    eight = np.ones((3, 3), bool)
    weak = _remove_lines(ink > max(HYSTERESIS_LOW * t, 0.15), ink)
    added = ndi.binary_propagation(seeds, structure=eight, mask=seeds | weak) & ~seeds
    pieces, n = ndi.label(added, structure=eight)
    if n == 0:
        return seeds
    groups, _ = ndi.label(seeds | added, structure=eight)  # each piece with all the strong ink joined to it
    strong_boxes = ndi.find_objects(np.where(seeds, groups, 0))
    (h, w), out = ink.shape, seeds.copy()
    for i, sl in enumerate(ndi.find_objects(pieces), start=1):
        y0, y1, x0, x1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
        if y0 == 0 or x0 == 0 or y1 == h - 1 or x1 == w - 1:
            continue  # it reaches the image's border
        box = strong_boxes[groups[sl][pieces[sl] == i][0] - 1]  # the strong ink it grew from
        r0, r1, c0, c1 = box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1
        reach = max(r1 - r0, c1 - c0) + 1
        if y0 >= r0 - reach and y1 <= r1 + reach and x0 >= c0 - reach and x1 <= c1 + reach:
            out[sl] |= pieces[sl] == i
    return out


def _straight(piece: np.ndarray, axis: int, length: int) -> np.ndarray:
    """The pixels of `piece` (H, W) bool on straight runs of at least `length` px along `axis`
    (1: horizontal, 0: vertical): a binary opening with a line, as 1-D min then max filters."""
    from scipy import ndimage as ndi

    length = max(3, int(length))
    return ndi.maximum_filter1d(ndi.minimum_filter1d(piece.view(np.uint8), length, axis=axis), length, axis=axis) > 0


def _elongation(piece: np.ndarray) -> tuple[float, float]:
    """(length / width, angle from horizontal in degrees) of `piece` (H, W) bool, from the
    principal axes of its pixel coordinates (skimage's regionprops)."""
    from skimage.measure import regionprops

    r = regionprops(piece.astype(np.uint8))[0]
    minor = max(r.axis_minor_length, 1.0)
    return r.axis_major_length / minor, abs(90.0 - abs(np.degrees(r.orientation)))


def _frame(piece: np.ndarray, others: np.ndarray) -> bool:
    """Whether `piece` (h, w) bool, one component, is a printed frame around other ink: a box,
    a row of boxes, a circle. Its holes (binary_fill_holes) hold at least FRAME_INSIDE of some
    other piece's pixels (`others` (h, w) bool, the rest of the ink in its box), and what they
    hold is at least FRAME_CONTENT of its height; or, holding nothing, it is a thin rectangle
    (an empty box is not a 0)."""
    from scipy import ndimage as ndi

    filled = ndi.binary_fill_holes(piece)
    holes = filled & ~piece
    if holes.sum() < FRAME_HOLE * filled.sum():
        return False  # the small loops of a 6, 8 or 9
    inside = others & holes
    if not inside.any():  # an empty frame: a printed box, or a printed circle (an ellipse drawn true)
        h, w = piece.shape
        return bool(piece.sum() <= FRAME_THIN * filled.sum() and (filled.sum() >= FRAME_RECT * h * w or _true_ellipse(filled)))
    labels, n = ndi.label(others, structure=np.ones((3, 3), bool))
    held = [i for i in range(1, n + 1) if (inside & (labels == i)).sum() >= FRAME_INSIDE * (labels == i).sum()]
    if not held:
        return False
    rows = np.nonzero(np.isin(labels, held).any(1))[0]
    return bool(rows[-1] - rows[0] + 1 >= FRAME_CONTENT * piece.shape[0])


def _true_ellipse(filled: np.ndarray) -> bool:
    """Whether the outline of `filled` (h, w) bool is an ellipse drawn true, as a printed or
    stencilled circle is: its boundary points lie within ELLIPSE_FIT of its size of the fitted
    ellipse (skimage's EllipseModel, least squares), on average. A 0 written by hand wobbles more."""
    from skimage.measure import EllipseModel, find_contours

    contours = find_contours(np.pad(filled, 1).astype(np.float32), 0.5)
    if not contours:
        return False
    points = max(contours, key=len)[:, ::-1]
    if len(points) < 20:
        return False
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(points)
    else:
        model = EllipseModel()
        model = model if model.estimate(points) else None
    if not model:
        return False
    return float(np.mean(np.abs(model.residuals(points)))) <= ELLIPSE_FIT * max(filled.shape)


def _rule_under(piece: np.ndarray, top: int, left: int, boxes: list, sizes: np.ndarray, i: int) -> bool:
    """Whether component i, `piece` (h, w) bool at (top, left), is an underline or a comb field's
    bracket: straight strokes only (a thin line, PCA elongation at least RULE_ELONGATION within
    RULE_ANGLE of horizontal; a solid bar RULE_BAR times wider than tall; or a horizontal run over RULE_SPAN of its width along its bottom
    with vertical ticks at both ends, which together cover RULE_COVER of it), with other ink (not specks)
    standing on it: ending above the run's top and within its columns."""
    h, w = piece.shape
    if w < 3 * RULE_MIN:
        return False
    run = _straight(piece, 1, RULE_SPAN * w)
    if not run.any():
        return False
    ticks = _straight(piece, 0, RULE_TICK * h)
    line_rows = np.nonzero(run.any(1))[0]
    lone_line = False
    if h <= 2 * (line_rows[-1] - line_rows[0] + 1) or h < w / RULE_ELONGATION:
        ratio, angle = _elongation(piece)
        lone_line = ratio >= RULE_ELONGATION and angle <= RULE_ANGLE
    tick_cols = np.nonzero(ticks.any(0))[0]
    ends = tick_cols.size > 0 and tick_cols[0] < RULE_END * w and tick_cols[-1] >= (1 - RULE_END) * w  # a tick at each end
    comb = ends and (run | ticks).sum() >= RULE_COVER * piece.sum() and line_rows[0] >= h / 2 - 1
    bar = run.sum() >= RULE_COVER * piece.sum() and w >= RULE_BAR * h  # a thick rule drawn with a marker
    if not (lone_line or comb or bar):
        return False
    y_line, x0, x1 = top + line_rows[0], left, left + w
    for j, b in enumerate(boxes):
        if j == i or b is None or sizes[j] < RULE_OTHER * sizes.max():
            continue
        bh = b[0].stop - b[0].start
        centre = (b[1].start + b[1].stop) / 2
        if b[0].stop <= y_line + RULE_TOUCH * bh and b[0].start < y_line and x0 <= centre <= x1 and bh >= RULE_MIN:
            return True
    return False


def _box_sides(piece: np.ndarray) -> np.ndarray | None:
    """The straight sides of a box that a digit's strokes touch, in `piece` (h, w) bool, one
    component: a horizontal run over BOX_SIDE of its width along its top and along its bottom
    (within BOX_EDGE of its height) and a vertical run over BOX_SIDE of its height along its left
    and right. The sides' pixels (h, w) bool when there is ink inside them too, else None."""
    h, w = piece.shape
    if min(h, w) < 3 * RULE_MIN:
        return None
    across, down = _straight(piece, 1, BOX_SIDE * w), _straight(piece, 0, BOX_SIDE * h)
    rows, cols = np.nonzero(across.any(1))[0], np.nonzero(down.any(0))[0]
    edge_h, edge_w = BOX_EDGE * h, BOX_EDGE * w
    if not (rows.size and cols.size and rows[0] < edge_h and rows[-1] >= h - edge_h and cols[0] < edge_w and cols[-1] >= w - edge_w):
        return None
    # The sides lie along the edges, across the top and bottom, down the left and right: a digit's
    # long stroke inside, or its end near one edge, is no side
    top_bottom, left_right = np.zeros_like(piece), np.zeros_like(piece)
    top_bottom[:int(edge_h) + 1], top_bottom[h - int(edge_h) - 1:] = 1, 1
    left_right[:, :int(edge_w) + 1], left_right[:, w - int(edge_w) - 1:] = 1, 1
    sides = (across & top_bottom) | (down & left_right)
    inside = piece & ~sides
    inside[:int(edge_h) + 1], inside[h - int(edge_h) - 1:], inside[:, :int(edge_w) + 1], inside[:, w - int(edge_w) - 1:] = 0, 0, 0, 0
    if inside.sum() < FRAME_INSIDE * 0.1 * piece.sum():
        return None
    return sides


def _ring(piece: np.ndarray) -> np.ndarray | None:
    """A circle drawn around a digit that touches it, in `piece` (h, w) bool, one component: its
    filled outline is convex (solidity at least RING_SOLID), its outer band is inked all round
    (RING_INKED) over some width (the ring's, at most RING_MAX of its size), and inside the band there is ink of its own, at least FRAME_CONTENT of the height: a digit.
    A 0 alone has nothing inside its band; the loops of a 6, 8 or 9 are not convex or hold only
    a crossing. The band's pixels (h, w) bool, else None."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops

    h, w = piece.shape
    if min(h, w) < 6 * RULE_MIN:
        return None
    filled = ndi.binary_fill_holes(piece)
    if filled.sum() < (1 + FRAME_HOLE) * piece.sum() or regionprops(filled.astype(np.uint8))[0].solidity < RING_SOLID:
        return None
    # The band's width: erode the filled outline while the band stays inked all round (the ring's width)
    inner_area, k = filled, 0
    while k < RING_MAX * min(h, w):
        eroded = ndi.binary_erosion(inner_area, border_value=0)
        if piece[filled & ~eroded].mean() < RING_INKED:
            break
        inner_area, k = eroded, k + 1
    if k == 0:
        return None
    inner_area = ndi.binary_erosion(inner_area, border_value=0)  # and one pixel more, the ring's soft edge
    band = filled & ~inner_area
    # Ink well inside the band (RING_DEEP times its width): a digit, not a stroke of uneven width
    inside = piece & ndi.binary_erosion(filled, iterations=RING_DEEP * (k + 1), border_value=0)
    rows = np.nonzero(inside.any(1))[0]
    if rows.size == 0 or rows[-1] - rows[0] + 1 < FRAME_CONTENT * h:
        return None
    return band & piece


def _along_edge(piece: np.ndarray, sl: tuple, shape: tuple[int, int]) -> bool:
    """Whether a piece (bool, its box `sl` in a picture of `shape`) lies along the picture's border:
    on it for at least half its length, at least EDGE_LONG of that side long, EDGE_THIN times
    longer than thick, and tapering (filling at most EDGE_TAPER of its box). The desk showing past
    a tilted sheet's edges in a photo framed a little wide, as wedges; a digit cut by the border
    touches it over a stroke's width or is as thick as long, and a pen's stroke along the border
    (a 1 drawn against the canvas's edge) fills its box. Called only when other ink is there."""
    h, w = shape
    ph, pw = piece.shape
    if piece.sum() > EDGE_TAPER * piece.size:
        return False
    for touches, contact, along, across, side in ((sl[0].start == 0, piece[0].sum(), pw, ph, w),
                                                  (sl[0].stop == h, piece[-1].sum(), pw, ph, w),
                                                  (sl[1].start == 0, piece[:, 0].sum(), ph, pw, h),
                                                  (sl[1].stop == w, piece[:, -1].sum(), ph, pw, h)):
        if touches and along >= EDGE_LONG * side and EDGE_THIN * across <= along and contact >= 0.5 * along:
            return True
    return False


def remove_structure(strong: np.ndarray) -> np.ndarray:
    """(H, W) bool ink mask -> the mask without printed structure around the digits: the desk
    along the picture's border (_along_edge), frames
    that enclose other ink (boxes, rows of boxes, circles; _frame), empty thin rectangles,
    underlines and comb-field brackets with ink standing on them (_rule_under), and the sides of a
    box or circle that the digit touches (_box_sides, _ring). Each is one
    connected component told apart by its geometry; a digit alone is left as it is."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(strong, structure=np.ones((3, 3), bool))
    if n == 0:
        return strong
    boxes = ndi.find_objects(labels)
    sizes = ndi.sum(strong, labels, index=np.arange(1, n + 1))
    out = strong.copy()
    for i, sl in enumerate(boxes):
        piece = labels[sl] == i + 1
        if min(piece.shape) < RULE_MIN and max(piece.shape) < 3 * RULE_MIN:
            continue
        if ((n > 1 and _along_edge(piece, sl, strong.shape)) or _frame(piece, (labels[sl] > 0) & ~piece)
                or (n > 1 and _rule_under(piece, sl[0].start, sl[1].start, boxes, sizes, i))):
            out[sl] &= ~piece
            continue
        sides = _box_sides(piece)
        if sides is None:
            sides = _ring(piece)
        if sides is not None:  # a box or circle the digit touches: its sides go, the digit stays
            out[sl] &= ~ndi.binary_dilation(sides, iterations=1) | ~piece
    return out


def find_digits(ink: np.ndarray, structure: bool = True) -> list[np.ndarray]:
    """(H, W) ink strength -> one bool mask (H, W) per digit, left to right; [] when no ink.
    find_marks' digits; the signs between them are left out."""
    return [m for kind, m in find_marks(ink, structure) if kind == "digit"]


def find_marks(ink: np.ndarray, structure: bool = True) -> list[tuple[str, np.ndarray]]:
    """(H, W) ink strength -> [(kind, bool mask (H, W))], left to right; [] when no ink. kind is
    "digit", or a sign written with digits: "." or "," (a dot or a tail at the baseline between
    two digits), "-" (a short bar at mid-height before the first digit), or "?" (a dot or a bar
    anywhere else: a mark the reader cannot place).

    Ink is what is above Otsu's threshold (and at least 0.15 strength, so paper grain and
    JPEG noise on a blank page are not ink). Printed structure (remove_structure) is set aside
    when `structure`. Components smaller than 1/20 of the largest, or
    far from it, are specks and dropped; components whose columns overlap belong to one digit;
    a group is a separate digit only if it is at least half the tallest group's height."""
    from scipy import ndimage as ndi

    if ink.max() < 0.15:
        return []
    t = max(_otsu(ink[ink > 0.02]) if (ink > 0.02).sum() > 16 else 0.15, 0.15)
    strong = hysteresis(ink, t)
    if structure:
        strong = remove_structure(strong)
    labels, n = ndi.label(strong, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sizes = ndi.sum(strong, labels, index=np.arange(1, n + 1))
    boxes = ndi.find_objects(labels)
    big = int(np.argmax(sizes))
    tall = max(sl[0].stop - sl[0].start for sl in boxes)

    def gap(s1, s2) -> int:  # the distance between two boxes (0 when they touch or overlap)
        dy = max(s1[0].start - s2[0].stop, s2[0].start - s1[0].stop, 0)
        dx = max(s1[1].start - s2[1].stop, s2[1].start - s1[1].stop, 0)
        return max(dy, dx)

    # Specks: small components (under 1/20 of the largest) far (over a third of the tallest
    # component's height) from every large one.
    large = [i for i in range(n) if sizes[i] >= sizes[big] / 20]
    keep = large + [i for i in range(n) if i not in large and sizes[i] >= 2
                    and min(gap(boxes[i], boxes[j]) for j in large) <= tall / 3]
    # Groups of components whose column ranges overlap (with a 1-px tolerance), left to right. A
    # small piece (a dot, a comma, a short bar: at most SIGN_DOT of the tallest component's height)
    # joins a group only when most of its columns are the group's; else it is a mark of its own.
    def small(i) -> bool:
        return max(boxes[i][0].stop - boxes[i][0].start, boxes[i][1].stop - boxes[i][1].start) <= SIGN_DOT * tall

    spans = sorted((boxes[i][1].start, boxes[i][1].stop, i) for i in keep if not small(i))
    groups: list[list] = []
    for start, stop, i in spans:
        if groups and start <= groups[-1][1] + 1:
            groups[-1][1] = max(groups[-1][1], stop)
            groups[-1][2].append(i)
        else:
            groups.append([start, stop, [i]])
    for i in (i for i in keep if small(i)):
        start, stop = boxes[i][1].start, boxes[i][1].stop
        home = [g for g in groups if min(stop, g[1]) - max(start, g[0]) > 0.5 * (stop - start)]
        if home:
            home[0][2].append(i)
        else:
            groups.append([start, stop, [i]])
    groups.sort(key=lambda g: g[0])

    def height(g) -> int:
        return max(boxes[i][0].stop for i in g[2]) - min(boxes[i][0].start for i in g[2])

    tallest = max(height(g) for g in groups)
    heaviest = max(sum(sizes[i] for i in g[2]) for g in groups)
    digits = [g for g in groups if height(g) >= 0.5 * tallest and sum(sizes[i] for i in g[2]) >= 0.15 * heaviest]
    signs = []  # (kind, group)
    pen = _stroke_width(np.isin(labels, [i + 1 for g in digits for i in g[2]])) if len(groups) > len(digits) else 0.0
    for g in groups:
        if g in digits:
            continue
        kind = _sign(g, [boxes[i] for i in g[2]], digits, boxes, tallest, sum(sizes[i] for i in g[2]))
        if kind in (".", ",", "?") and not _thick(g, boxes, pen, 0.0 if kind != "?" else SIGN_PEN_ODD):
            kind = None  # a speck of dirt, finer than the pen's dot: joined or dropped as before
        if kind:
            signs.append((kind, g))
            continue
        # A group too small to be a digit (a detached bar of a 5, the tail of a 7) joins the
        # nearest digit when it is close (a third of the tallest height), else it is dropped.
        d, near = min((max(g[0] - o[1], o[0] - g[1], 0), k) for k, o in enumerate(digits))
        if d <= tallest / 3:
            digits[near][2] += g[2]
    marks = [("digit", g) for g in digits] + signs
    marks.sort(key=lambda m: m[1][0])
    return [(kind, np.isin(labels, [i + 1 for i in g[2]])) for kind, g in marks]


def _stroke_width(mask: np.ndarray) -> float:
    """The mean stroke width in px of the ink `mask` (H, W) bool: its area over its skeleton's length."""
    from skimage.morphology import skeletonize

    length = int(skeletonize(mask).sum())
    return float(mask.sum()) / length if length else 0.0


def _thick(g: list, boxes: list, pen: float, share: float) -> bool:
    """Whether the group g's pieces are drawn with a pen like the digits': its box at least `share`
    of their stroke width `pen`, and SIGN_MIN_PX, both ways. A speck of dirt is finer than a pen's dot."""
    y0, y1 = min(boxes[i][0].start for i in g[2]), max(boxes[i][0].stop for i in g[2])
    return min(y1 - y0, g[1] - g[0]) >= max(share * pen, SIGN_MIN_PX)


def _sign(g: list, parts: list, digits: list, boxes: list, tallest: int, area: float) -> str | None:
    """The sign a small group `g` ([x0, x1, components]) is, from its box (the union of `parts`)
    and the digit groups around it: "." or "," at the baseline between two digits, "-" at
    mid-height before the first digit, "?" a dot or bar elsewhere; None for other small pieces
    (a digit's detached stroke, joined to it by find_marks). `area`: the group's ink in px: a
    comma's tail tapers, so it fills at most SIGN_TAIL_FILL of its box; a printed period smeared
    taller than wide fills it."""
    y0, y1 = min(b[0].start for b in parts), max(b[0].stop for b in parts)
    x0, x1 = g[0], g[1]
    h, w = y1 - y0, x1 - x0
    if max(h, w) > SIGN_MAX * tallest:
        return None
    left = [d for d in digits if d[1] <= x0]
    right = [d for d in digits if d[0] >= x1]

    def rows(d) -> tuple[int, int]:
        return min(boxes[i][0].start for i in d[2]), max(boxes[i][0].stop for i in d[2])

    dot = max(h, w) <= SIGN_DOT * tallest and max(h, w) <= SIGN_ROUND * min(h, w)
    tail = (max(h, w) <= SIGN_DOT * tallest and h >= SIGN_TAIL * w and h <= SIGN_ROUND * 2 * w
            and (min(h, w) < SIGN_FILL_MIN or area <= SIGN_TAIL_FILL * h * w))  # a few pixels fill any box
    bar = w >= SIGN_BAR * h and w >= SIGN_SHORT * tallest
    if not (dot or tail or bar):
        return None
    gaps = ([x0 - left[-1][1]] if left else []) + ([right[0][0] - x1] if right else [])
    near = min(gaps) if gaps else np.inf  # px to the nearest digit
    if (dot or tail) and left and right:
        top, bottom = rows(left[-1])
        top2, bottom2 = rows(right[0])
        top, bottom = min(top, top2), max(bottom, bottom2)
        if (y0 + y1) / 2 >= top + SIGN_LOW * (bottom - top):
            return "," if tail or y1 > bottom + SIGN_BELOW * (bottom - top) else "."
    if bar and right and not left:
        top, bottom = rows(right[0])
        if top + SIGN_MID[0] * (bottom - top) <= (y0 + y1) / 2 <= top + SIGN_MID[1] * (bottom - top) and near <= tallest:
            return "-"
    # Elsewhere: clear of the digits but near them, a sign out of place; touching them, a digit's own piece
    return "?" if SIGN_CLEAR * tallest < near <= tallest else None


def edge_step(grey: np.ndarray, region: np.ndarray, k: int = 3) -> float:
    """How sharp the edge of `region` (H, W) bool is in `grey` (H, W), where it lies inside the
    picture: the step in grey across the edge within k px (median of a k-px ring inside minus
    median of one outside) over the step between the region's median and the rest's. About 1 for
    a sheet's cut edge on a desk, near 0 for light falling off across a page; 0.0 when undefined."""
    from scipy import ndimage as ndi

    inner = region & ~ndi.binary_erosion(region, iterations=k, border_value=1)  # the picture's edge is not the region's
    outer = ndi.binary_dilation(region, iterations=k) & ~region
    if region.all() or not inner.any() or not outer.any():
        return 0.0
    step = float(np.median(grey[region]) - np.median(grey[~region]))
    return float(np.median(grey[inner]) - np.median(grey[outer])) / step if step > 0 else 0.0


def strokes_off(grey: np.ndarray, off: np.ndarray) -> bool:
    """Whether the part `off` (H, W) bool of `grey` (H, W) holds dark strokes: pixels at least
    SHEET_OFF_INK darker than their surroundings (a black top-hat over a fifth of the shorter side,
    relative to the closing, or to SHEET_CONTRAST where that is darker), at least SHEET_OFF_PIXELS
    of the picture. A desk has grain and noise, not strokes."""
    from scipy import ndimage as ndi

    if not off.any():
        return False
    g = np.where(off, grey, np.median(grey[off])).astype(np.float32)  # the sheet painted desk, so its edge is no stroke
    closed = ndi.grey_closing(g, size=max(3, min(g.shape) // 5))
    # darker by SHEET_OFF_INK of the surroundings, and of SHEET_CONTRAST at least: on a near-black desk
    # the relative noise is large
    dark = (closed - g > SHEET_OFF_INK * np.maximum(closed, SHEET_CONTRAST)) & ndi.binary_erosion(off, iterations=2)
    return dark.sum() >= SHEET_OFF_PIXELS * g.size


def on_sheet(grey: np.ndarray) -> np.ndarray:
    """A sheet or a sticky note photographed on a darker desk: (H, W) grey in [0, 1] -> the sheet's
    bounding box with everything off the sheet painted the sheet's paper colour; `grey` unchanged
    otherwise. Else the desk, all round the border, is taken for the paper and the sheet for ink.

    The sheet: the largest light region (halfway from the desk's level to the 95th percentile,
    holes filled), SHEET_CONTRAST lighter than the desk; the desk's level is the border's median,
    or its 10th percentile when the sheet fills most of the border. The region covers at least
    SHEET_AREA of the image and SHEET_FILL of its bounding box (a sheet is a quadrilateral), its
    edge is sharp (edge_step at least SHEET_SHARP: light falling off across a page, or a soft
    shadow, is not a sheet), at least SHEET_PAPER of it is light (it is paper, not a big
    white-on-black digit), it holds some dark ink, and there are no strokes off it (strokes_off: a
    hard shadow over part of a page, whose strokes go on in the shadow). It may run off the
    picture. Its rim (SHEET_RIM of its shorter side)
    is left out, with the sheet's edge and shadow."""
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    if min(grey.shape) < MIN_SIDE:
        return grey
    border = _border(grey)
    desk, top = np.median(border), np.percentile(grey, 95)
    if top - desk < SHEET_CONTRAST:  # the border is mostly as light as the sheet: is some of it desk?
        desk = np.percentile(border, 10)
        if top - desk < SHEET_CONTRAST:  # nothing much lighter than the border: no sheet on a desk
            return grey
    light = grey > (desk + top) / 2
    labels, n = ndi.label(ndi.binary_fill_holes(light))
    if n == 0:
        return grey
    sizes = ndi.sum_labels(np.ones_like(grey), labels, index=np.arange(1, n + 1))
    region = labels == 1 + int(np.argmax(sizes))
    rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    if region.sum() < SHEET_AREA * grey.size or region.sum() < SHEET_FILL * box:
        return grey
    if edge_step(grey, region) < SHEET_SHARP:
        return grey  # a soft edge: light falling off (a vignette) or a soft shadow on the page itself
    hull = convex_hull_image(region)  # the sheet with its ink, also strokes that reach its edge (and so the desk)
    rim = max(1, int(SHEET_RIM * min(rows[-1] - rows[0], cols[-1] - cols[0])))
    inside = ndi.binary_erosion(hull, iterations=rim)
    paper = light[inside].mean() if inside.any() else 1.0
    if paper < SHEET_PAPER or paper == 1.0:  # a big white-on-black shape, or a sheet with no ink
        return grey
    if strokes_off(grey, ~ndi.binary_dilation(hull, iterations=rim)):
        return grey  # ink off the sheet: a page in a hard shadow, not a desk
    out = np.where(inside, grey, np.median(grey[region & light]))
    return out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
