"""What the train stage needs beside the model: batches, callbacks, checkpoints, tf.distribute strategies."""
