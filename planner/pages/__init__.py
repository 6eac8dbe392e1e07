"""plan-job report: one self-contained HTML page of a calibration and its plan, a run, or
the history, with the CLI's numbers as figures.

The page is built from the objects the other commands print (CalibrationRecord, the
CorrectedPlan and plan_json, Eta, history_json), so its numbers are theirs: each headline
number carries the --json key it came from (``data-json``), which the browser tests compare
with the command's --json. Figures are matplotlib's (svg: imported on first use, by this
command alone), inlined as SVG; the page fetches nothing: no script, font or image.

Modules: ``svg`` (matplotlib to inline SVG), ``html`` (the page's markup), ``charts``
(axes styling and units shared by the figures), one module per section (``calibration``,
``plan``, ``run``, ``history``) and ``build`` (a page of each kind).
"""
