"""JavaScript the tests run in the gateway's web page: drop a file, read the class bars."""

DROP_FILE = """
(async () => {
  const bytes = Uint8Array.from(atob(%r), (c) => c.charCodeAt(0));
  const file = new File([bytes], %r, { type: %r });
  const transfer = new DataTransfer();
  transfer.items.add(file);
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
  return true;
})()
"""

BARS = """
[...document.querySelectorAll('#bars .bar')].map((bar) => ({
  name: bar.querySelector('.label span').textContent,
  pct: parseFloat(bar.querySelector('.label span:last-child').textContent),
  width: parseFloat(bar.querySelector('.fill').style.width),
}))
"""
