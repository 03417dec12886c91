"""A dependency-free text progress bar for training epochs."""

import sys
import time


class EpochProgress:
    """Print one line per epoch: a bar of epochs done, the loss, extras and time.

    Parameters
    ----------
    total : int
        Number of epochs planned.
    stream : file-like, default=sys.stdout
        Where to write.
    width : int, default=20
        Characters of the bar.

    Examples
    --------
    >>> import io
    >>> from pylstm._progress import EpochProgress
    >>> buf = io.StringIO()
    >>> bar = EpochProgress(2, stream=buf)
    >>> bar.update(1, loss=0.5)
    >>> buf.getvalue().startswith('Epoch 1/2 [##########')
    True
    """

    def __init__(self, total, stream=None, width=20):
        self.total = max(int(total), 1)
        self.stream = sys.stdout if stream is None else stream
        self.width = width
        self.start = time.perf_counter()

    def update(self, epoch, loss, **extras):
        """Report epoch ``epoch`` (1-based) with its ``loss`` and named extras."""
        done = min(epoch, self.total) * self.width // self.total
        bar = "#" * done + "." * (self.width - done)
        parts = [f"Epoch {epoch}/{self.total} [{bar}] loss {loss:.5g}"]
        parts += [f"{name} {value:.5g}" for name, value in extras.items() if value is not None]
        parts.append(f"{time.perf_counter() - self.start:.1f}s")
        print(" - ".join(parts), file=self.stream, flush=True)
