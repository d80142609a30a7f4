// One language for the whole page: ticket labels (Russian and English; tickets from the API
// carry their own `labels`, these tables — the same as orchestrator/incidents/workflow.py — are
// for filters and status forms) and the page text (`t`: English text → Russian). The choice is
// kept in localStorage; until one is made the browser's language decides (Russian for ru-*).
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
  const chosen = localStorage.getItem(LANG);
  if (chosen === "en" || chosen === "ru") return chosen;
  return /^ru\b/i.test(navigator.language || "") ? "ru" : "en";
}

export function setLang(value) {
  localStorage.setItem(LANG, value === "en" ? "en" : "ru");
}

/** The label in the chosen language from a {ru, en} pair, else `fallback`. */
export function label(pair, fallback) {
  return (pair && (pair[lang()] || pair.en || pair.ru)) || fallback;
}

// Page text in Russian, keyed by the English text the pages are written in.
const RU = {
  Fleet: "Парк",
  Rollouts: "Выкатки",
  Incidents: "Инциденты",
  Monitors: "Мониторы",
  "Log out": "Выйти",
  "Log in": "Войти",
  "Log in to cpdops": "Вход в cpdops",
  "API token": "API-токен",
  "Your name (shown on ticket timelines)": "Ваше имя (видно в истории заявок)",
  "Checking the token…": "Проверяем токен…",
  "This token is not valid (401).": "Токен не принят (401).",
  "Loading…": "Загрузка…",
  "Language": "Язык",
  "Times in": "Время",
  any: "любой",
  Type: "Тип",
  Status: "Статус",
  Priority: "Приоритет",
  Tenant: "Клиент",
  Apply: "Применить",
  "No tickets match.": "Нет подходящих заявок.",
  "← newer": "← новее",
  "older →": "старее →",
  number: "номер",
  type: "тип",
  status: "статус",
  priority: "приоритет",
  tenant: "клиент",
  subject: "тема",
  updated: "обновлена",
  owner: "ответственный",
  source: "источник",
  rollout: "выкатка",
  "opened / updated": "открыта / обновлена",
  Description: "Описание",
  Attachments: "Вложения",
  Timeline: "История",
  Evidence: "Данные",
  "Add a comment": "Добавить комментарий",
  "Add comment": "Добавить",
  Comment: "Комментарий",
  as: "от имени",
  "the customer's reply": "ответ клиента",
  "required for": "обязателен для",
  "Tenant incidents": "Инциденты клиентов",
  "Change status": "Сменить статус",
  "New status": "Новый статус",
  "Set priority": "Изменить приоритет",
  "New priority": "Новый приоритет",
  "Set owner": "Назначить",
  "Owner (empty: nobody)": "Ответственный (пусто — никто)",
  nobody: "никто",
  "Saving…": "Сохраняем…",
  "Saved.": "Сохранено.",
  "Ticket created": "Заявка создана",
  created: "создана",
  comment: "комментарий",
  attachment: "вложение",
  recovered: "восстановлен",
  linked: "связана",
  child: "дочерняя заявка",
  "← all incidents": "← все заявки",
  "Part of mass incident ": "Часть массового инцидента ",
  logs: "журнал",
  "a reply from the customer (reopens a ticket awaiting information or with a solution)":
    "ответ клиента (снова открывает заявку, ждущую информации или с решением)",
  Filter: "Фильтр",
  rows: "строк",
  of: "из",
  Hosts: "Хосты",
  hosts: "хостов",
  tenants: "клиентов",
  instances: "экземпляров",
  monitors: "мониторов",
  down: "недоступно",
  host: "хост",
  engine: "движок",
  TLS: "TLS",
  ring: "кольцо",
  container: "контейнер",
  version: "версия",
  state: "состояние",
  "uptime 24h": "доступность 24 ч",
  "no instance": "нет экземпляра",
  monitor: "монитор",
  kind: "вид",
  target: "цель",
  reason: "причина",
  uptime: "доступность",
  window: "окно",
  changed: "изменён",
  "kind / host": "вид / хост",
  Monitor: "Монитор",
  "Recent checks": "Последние проверки",
  average: "среднее",
  maximum: "максимум",
  "DOWN (failed checks)": "DOWN (неудачные проверки)",
  "This monitor is not in the current list.": "Этого монитора нет в текущем списке.",
};

/** The page text `text` in the chosen language (English as written, else Russian if known). */
export function t(text) {
  return (lang() === "ru" && RU[text]) || text;
}
