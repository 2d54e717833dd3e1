"""Online inference: `launch.py serve MODEL` puts anything `predict` takes behind an HTTP API and a page, on Ray
Serve (`app`: the deployments and the API; `run`: the command; `page.html`: the page at `/`)."""
