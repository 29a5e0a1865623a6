"""The farm as data: the job spec, jobs/blocks/tasks/users/renders, the scheduler and the
farm that changes them, and the events it publishes. No I/O and no imports from the edges
(server transport, web, stats, sysjob, render): time comes from the clock passed in.
"""
