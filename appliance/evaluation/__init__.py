"""Dialog evaluation: scripted conversations run through the robot's brain and judged, for prompt CI.

``appliance eval scenarios.toml`` loads scenarios (:mod:`.scenarios`), plays each one's turns through the
configured cloud brain as text (:mod:`.runner`), and has a separately configured model, or a Python check,
judge every reply and the scenario's goal (:mod:`.judge`).
"""
