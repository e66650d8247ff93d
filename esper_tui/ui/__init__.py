"""How a run is shown: the Textual dashboard (app.py, help.py, runner.py, replay_app.py) or, headless, a line per
snapshot (headless.py, status_line.py, output.py); curves.py gathers the training curves the plot panel and
`esper-tui plot` draw; comparison.py and compare_app.py set two recorded runs side by side (`esper-tui compare`);
web.py serves any of these screens to browsers (`esper-tui serve`)."""
