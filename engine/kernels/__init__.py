"""What gets compiled and how: the blueprint catalog, the compile pipelines, and the torch side of a kernel.

The lowest engine layer with torch in it: the library stores what `compiled` builds, the forge drives
it in sandboxed workers, and the training loop loads it.
"""
