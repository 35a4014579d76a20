"""The Label Studio review contract shared by the relabel queue (which writes tasks) and ingest (which
reads the reviewers' export).

One task per camera image of a picked frame. The model's 3D boxes, projected into that camera, are the
task's prediction: one ``rectanglelabels`` region per visible box, whose region id names the 3D box
(:func:`region_id`). A reviewer keeps a region (accepted), deletes it (rejected) or changes its label
(reclassed), and ticks :data:`MISSING_CHOICE` when the image shows objects no box covers. Regions the
reviewer draws are 2D only; they count as a missing-object flag for the frame.

    <View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="box" toName="image"> one <Label> per detection class </RectangleLabels>
      <Choices name="frame" toName="image" choice="multiple"> <Choice value="missing objects"/> </Choices>
    </View>

Task ``data``: ``image`` (URL), ``frame`` (sample token), ``camera``, ``run`` (mining run name),
``dataset`` (absolute dataset root), ``score`` (the frame's combined mining score).
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

IMAGE_NAME = "image"  # the <Image> control's name, and the task data key holding the image URL
BOX_CONTROL = "box"  # <RectangleLabels name=...>
FRAME_CONTROL = "frame"  # <Choices name=...> for per-image flags
MISSING_CHOICE = "missing objects"
REGION_PREFIX = "b"
MAX_ID_DIGITS = 18  # a longer number names no box (and int() refuses numbers of over 4300 digits)


def region_id(box_index: int) -> str:
    """The region id of 3D box ``box_index`` (its position in the frame's stored predictions)."""
    return f"{REGION_PREFIX}{int(box_index)}"


def box_index(region: str) -> int | None:
    """The 3D box a region id names, or None for a region the reviewer drew (ids such as "b²" or "b١",
    digits to str.isdigit but not ASCII ones, are the reviewer's too)."""
    digits = region[len(REGION_PREFIX):]
    if region.startswith(REGION_PREFIX) and digits.isascii() and digits.isdigit() and len(digits) <= MAX_ID_DIGITS:
        return int(digits)
    return None


def labeling_config(classes: Sequence[str]) -> str:
    """The labeling config XML matching the tasks, with one label per detection class."""
    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f"  <Image name={quoteattr(IMAGE_NAME)} value=\"${IMAGE_NAME}\"/>\n"
        f"  <RectangleLabels name={quoteattr(BOX_CONTROL)} toName={quoteattr(IMAGE_NAME)}>\n{labels}\n"
        "  </RectangleLabels>\n"
        f"  <Choices name={quoteattr(FRAME_CONTROL)} toName={quoteattr(IMAGE_NAME)} choice=\"multiple\">\n"
        f"    <Choice value={quoteattr(MISSING_CHOICE)}/>\n"
        "  </Choices>\n"
        "</View>\n"
    )
