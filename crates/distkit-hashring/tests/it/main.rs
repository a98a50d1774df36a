mod hostile;
mod proptests;
