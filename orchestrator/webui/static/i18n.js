// Ticket labels in Russian and English. Tickets from the API carry their own `labels`; these
// tables (the same as orchestrator/incidents/workflow.py) are for filters and status forms.
const LANG = "cpdops.lang";

export const TYPES = {
  incident: { ru: "Инцидент", en: "Incident" },
  mass_incident: { ru: "Массовый инцидент", en: "Mass incident" },
  consultation: { ru: "Консультация", en: "Consultation" },
  development_request: { ru: "Запрос на доработку", en: "Development request" },
};
export const STATUSES = {
  new: { ru: "Новая", en: "New" },
  open: { ru: "В работе", en: "Open" },
  awaiting_info: { ru: "Запрошена информация", en: "Awaiting information" },
  solution_provided: { ru: "Решение предоставлено", en: "Solution provided" },
  closed: { ru: "Закрыта", en: "Closed" },
};
export const PRIORITIES = {
  low: { ru: "Низкий", en: "Low" },
  normal: { ru: "Обычный", en: "Normal" },
  high: { ru: "Высокий", en: "High" },
  critical: { ru: "Критический", en: "Critical" },
};
export const TRANSITIONS = {
  new: ["open", "awaiting_info", "solution_provided", "closed"],
  open: ["awaiting_info", "solution_provided", "closed"],
  awaiting_info: ["open", "solution_provided", "closed"],
  solution_provided: ["open", "closed"],
  closed: ["open"],
};

export function lang() {
  return localStorage.getItem(LANG) === "en" ? "en" : "ru";
}

export function setLang(value) {
  localStorage.setItem(LANG, value === "en" ? "en" : "ru");
}

/** The label in the chosen language from a {ru, en} pair, else `fallback`. */
export function label(pair, fallback) {
  return (pair && (pair[lang()] || pair.en || pair.ru)) || fallback;
}
