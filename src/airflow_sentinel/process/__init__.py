"""Process handling: the guard (fence) process, the handle the controller holds, strays."""
