"""The workflow's stage glue: one module per workflow rule, named by it.

A stage module reads its rule's input files, calls the maths of the packages below, writes the
rule's outputs and logs what it did; each workflow script (``workflow/scripts/<rule>.py``) calls
one of its functions. The packages below hold the maths and their own file formats, so a stage
that draws on several of them (the summary reads the evaluation's tables, the knob selection and
the pixel statistics; the figures read evaluation tables, reward credits and images) needs no
package to import one above it (docs/architecture.md).
"""
