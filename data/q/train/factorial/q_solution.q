solve:{prd 1+til x}
