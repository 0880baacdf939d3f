"""Each workflow rule's glue on files: one module per rule, named by it.

A stage module reads the rule's input files, calls the maths of the packages below, writes the
rule's outputs and logs; the packages below hold the maths and their own file formats (issue 20,
item 3). A rule whose work draws on more than one package (the summary reads the evaluation's
tables, the knob selection and the pixel statistics; the figures read evaluation tables, reward
credits and images) keeps that glue here too, at the top of the layers (docs/architecture.md),
so no package has to import one above it.
"""
