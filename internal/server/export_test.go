package server

// Parked is how many long-polls s holds parked off net/http.
func Parked(s *Server) int { return s.lot.len() }
