"""The machinery behind run_study.py, one concern a module.

plan     the study's runs and steps, as data (add a step kind in ``plan.STAGES``)
stamps   when a step is up to date, and when an interrupted training is resumed
runner   runs a step as a subprocess, streaming its output to the console and its log
data     which data the study uses (the datasets, or demo data made once)
weights  how XceptionBased starts (ImageNet weights, found by train_main.py --check_weights, or random)
numbers  the report's numbers of each run, and how they compare with the study
report   the one-page report (its tables as data; report.j2 lays it out, markdown.j2 and html.j2
         render it) and the summary JSON
"""
