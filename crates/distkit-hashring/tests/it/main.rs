mod proptests;
