solve:{" " sv reverse " " vs x}
