"""The supervisor's side: code here runs only in the parent process.

``process`` starts, reaps and kills one worker (the only place that kills); ``monitor``
watches its heartbeat; ``attempt`` runs one request on one worker and says how it
ended; ``policy`` holds the retry, backoff and circuit rules; ``stats`` counts;
``dispatcher`` owns one role's queue and worker lifecycle. Nothing here imports the
worker side (``child``, ``roles``).
"""
