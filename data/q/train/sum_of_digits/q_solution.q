solve:{sum "0123456789"?string x}
