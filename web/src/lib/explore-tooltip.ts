/**
 * Where the hover tooltip goes, in the coordinates of the view's own root element (the tooltip is
 * absolutely positioned inside it): never page or window coordinates, which are wrong inside a scrolled
 * notebook output, an iframe or any ancestor with a transform. Pure, so it is tested without a DOM.
 */

export interface Box {
  left: number;
  top: number;
  width: number;
  height: number;
}

const RIGHT = 12; // the tooltip starts right of the pointer
const BELOW = 16; // … and below it
const ABOVE = 8; // the gap when it flips above the pointer
const MARGIN = 4;

/**
 * `pointer`: the mouse in client coordinates; `root`: the root's client rect; `tip`: the tooltip's size;
 * `viewBottom`: the bottom of the visible area in client coordinates (a tall root in a notebook is partly
 * scrolled out). Returns left/top relative to the root, keeping the tooltip inside it.
 */
export function placeTooltip(pointer: { x: number; y: number }, root: Box, tip: { width: number; height: number }, viewBottom = Infinity): { left: number; top: number } {
  const x = pointer.x - root.left;
  const y = pointer.y - root.top;
  const left = Math.max(0, Math.min(x + RIGHT, root.width - tip.width - MARGIN));
  const fitsBelow = y + BELOW + tip.height <= root.height - MARGIN && pointer.y + BELOW + tip.height <= viewBottom;
  let top = fitsBelow ? y + BELOW : y - ABOVE - tip.height;
  top = Math.max(0, Math.min(top, root.height - tip.height - MARGIN));
  return { left, top };
}
