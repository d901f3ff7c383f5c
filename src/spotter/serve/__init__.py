"""`spotter serve`: a local web page and JSON API for trained runs, with explanations."""
