"""Spotter: trains, evaluates and serves two binary detectors (histopathology CNN, disaster-tweet RNN)."""
__version__ = "0.1.0"
