"""Source for child processes that record what Numba compiles.

``LISTENER`` is prepended to a child's ``python -c`` script: it registers a
``numba:compile`` listener before anything is imported, and the child's
``compiled`` list then holds ``[module.qualname, [argument types]]`` for
every function Numba compiled (nothing for one loaded from its cache).
"""

LISTENER = '''
from numba.core import event
compiled = []


class Listener(event.Listener):
    def on_start(self, e):
        pass

    def on_end(self, e):
        d = e.data["dispatcher"]
        f = getattr(d, "py_func", d)
        compiled.append([f"{getattr(f, '__module__', '')}.{f.__qualname__}", [str(a) for a in e.data["args"]]])


event.register("numba:compile", Listener())
'''
