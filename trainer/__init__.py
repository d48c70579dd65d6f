"""Trainer: deep RNN language models (pure builders), tf.data input, training and tuning."""
