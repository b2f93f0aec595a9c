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

HEATMAP = """
(() => {
  const canvas = document.getElementById('heatmap');
  const img = document.getElementById('preview');
  const box = canvas.getBoundingClientRect();
  const frame = img.getBoundingClientRect();
  const scale = Math.min(frame.width / img.naturalWidth, frame.height / img.naturalHeight);
  const width = img.naturalWidth * scale, height = img.naturalHeight * scale;
  const alpha = [...canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data]
    .filter((_, i) => i % 4 === 3);
  return {
    shown: getComputedStyle(canvas).display === 'block' && img.naturalWidth > 0,
    box: { left: box.left, top: box.top, width: box.width, height: box.height },
    picture: { left: frame.left + (frame.width - width) / 2, top: frame.top + (frame.height - height) / 2, width, height },
    size: [canvas.width, canvas.height],
    maxAlpha: Math.max(...alpha),
    minAlpha: Math.min(...alpha),
  };
})()
"""
