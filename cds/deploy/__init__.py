"""Deploy, Auto deploy, Set Force Config, and the landing page of a deployment link."""
