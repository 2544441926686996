solve:{count where x in "aeiouAEIOU"}
