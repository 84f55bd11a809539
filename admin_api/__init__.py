"""The admin API's routes (``/_synapse/admin``, Synapse's paths and shapes): for the server's
administrators only; the services under homeserver/admin/ refuse anyone else."""
