// Types only.
export {};
