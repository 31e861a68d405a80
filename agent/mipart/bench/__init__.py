"""`mipart bench`: a pinned load tool in its own venv drives a service's listener; results in our own schema.

One concern per module: the tool and its venv (`tool`, `pins`), the sweep and the tool's argv
(`sweep`), running it (`drive`), its output in our schema (`normalise`), the results file
(`results`), what a run is tagged with (`tags`), the word tokenizer for fake engines
(`tokenizer`), the run itself (`run`), and the comparison: a Markdown table (`table`) and the figure (`plot`).
`bench sweep --layouts` adds: the layouts, target and winner (`layouts`), the profile override
it runs each layout with (`override`), telling the agent to reload (`reload`), waiting for full
serving (`serving`), and the sweep itself (`layout_sweep`).
"""
