"""Reaching a job's API from here: endpoint, tunnel, OpenAI client, benchmark."""
