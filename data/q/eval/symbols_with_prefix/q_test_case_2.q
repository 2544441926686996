result:solve[`cat`car`dog`cart;"car"]; show result;
