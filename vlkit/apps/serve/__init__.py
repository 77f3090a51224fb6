"""``vlkit serve``: an HTTP service over a fitted run or an upgrade run, with a web page.

``runs.ServedRun`` loads a run and answers predictions and (upgrade runs) adds;
``uploads`` turns request bytes into images under explicit limits; ``heldout`` scores a
fixed held-out sample for the page; ``app.create_app`` is the FastAPI application
(the ``serve`` extra: ``pip install "vlkit[serve]"``). Nothing here imports FastAPI
until ``app`` is imported, so the library stays usable without the extra.
"""
