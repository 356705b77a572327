"""Everything on the event loop of ``camingest serve``: the app, the Socket.IO transport and its
events, who may talk to it, the HTTP routes per resource, previews, export jobs, enrolment."""
