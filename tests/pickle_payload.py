"""A weights file that runs code when unpickled: what loaders must never execute."""

import os


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
