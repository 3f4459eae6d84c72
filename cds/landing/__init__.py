"""The landing page a person reaches from a deployment link (/deploy/<token>): public."""
