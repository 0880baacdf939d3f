"""Stage modules that combine several packages on files: one module per workflow rule, named by it.

The packages below hold the maths and their own file formats; a rule whose work draws on more than
one of them (the summary reads the evaluation's tables, the knob selection and the pixel
statistics; the figures read evaluation tables, reward credits and images) keeps that glue here, at
the top of the layers (docs/architecture.md), so no package has to import one above it.
"""
