def machine(): return ""
