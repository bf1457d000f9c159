"""The pure domain: datasets, jobs, events and paging rules. No I/O, no framework."""
