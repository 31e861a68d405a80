"""mipart's own nginx: its config (conf), putting a config into service (files), our nginx processes
in /proc (procs), and mipart-nginx.service's ExecStart (launcher)."""
